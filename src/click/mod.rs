//! Click: who is tapping? The agent class decides whether a tap counts toward `max_clicks`
//! (and, with attribution, whether it may open a lead).

pub mod agent;

pub use agent::{Agent, classify};
