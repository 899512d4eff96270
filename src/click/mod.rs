//! Click: who is tapping ([`agent`]), the record of the tap and the events downstream ([`event`]),
//! and the hot path's bounded hand-off to the batcher ([`queue`]).

pub(crate) mod agent;
pub(crate) mod event;
pub(crate) mod queue;

pub(crate) use agent::Agent;
pub(crate) use event::{ClickRecord, Event, EventType, Queued};
pub(crate) use queue::EventQueue;
