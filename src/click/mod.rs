//! Click: who is tapping ([`agent`]), and the record of the tap that goes downstream ([`event`]).

pub mod agent;
pub mod event;

pub use agent::{Agent, classify};
pub use event::{ClickRecord, Event, EventType, Queued};
