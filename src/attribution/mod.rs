//! Attribute: leads on the first human tap, partner chains, campaigns, conversions and commission.

pub mod model;
