//! Click: who is tapping ([`agent`]), the record of the tap and the events downstream ([`event`]),
//! and the hot path's bounded hand-off to the batcher ([`queue`]).

pub mod agent;
pub mod event;
pub mod queue;

pub use agent::{Agent, classify};
pub use event::{ClickRecord, Event, EventType, Queued};
pub use queue::EventQueue;
