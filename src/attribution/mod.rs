//! Attribute: who becomes a lead, how a conversion is attributed, and who is paid for it.
//!
//! Plain records ([`model`]) and plain functions over them, unit-tested without HTTP or a store:
//! - [`leads`]: the first human tap of a personalised link opens that recipient's lead; an API
//!   call opens one for an anonymous scan;
//! - [`conversions`]: the attribution window (with clock skew), partner chains of up to
//!   [`MAX_LEVELS`] and their commission.
//!
//! The functions that walk the partner tree take the lookup as an argument, so the API hands them
//! the store and the tests a map.

pub(crate) mod binding;
pub(crate) mod conversions;
pub(crate) mod leads;
pub(crate) mod model;

pub(crate) use self::conversions::{MAX_LEVELS, TreeError, chain, check_parent, commissions};
