//! Field-by-field reading of small JSON bodies (partners, campaigns, leads, conversions): every
//! bad or unknown field is collected, so one 422 names them all.

use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError};
use crate::link::input;

pub(super) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// Starts reading `obj`, refusing every field not in `allowed`.
    pub(super) fn new(obj: &'a Map<String, Value>, allowed: &[&str]) -> Self {
        let errors = obj
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| FieldError::new(k.as_str(), "unknown field"))
            .collect();
        Self { obj, errors }
    }

    fn present(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    pub(super) fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(name, message));
    }

    fn missing(&mut self, name: &str) {
        self.error(name, "is required");
    }

    /// An id (1–128 bytes, no control characters).
    pub(super) fn id(&mut self, name: &str, required: bool) -> Option<String> {
        match self.present(name) {
            None => {
                if required {
                    self.missing(name);
                }
                None
            }
            Some(v) => input::id(v).map_err(|m| self.error(name, m)).ok().flatten(),
        }
    }

    /// An ISO 4217 currency code (three capital letters), such as `CNY`; a value that is not one
    /// is recorded as this field's error (and `finish` then refuses the call).
    pub(super) fn currency(&mut self, name: &str) -> Option<String> {
        let c = self.string(name, 3, false);
        if c.as_deref().is_some_and(|c| !is_currency(c)) {
            self.error(name, CURRENCY_ERROR);
        }
        c
    }

    /// A string of 1 to `max` bytes.
    pub(super) fn string(&mut self, name: &str, max: usize, required: bool) -> Option<String> {
        match self.present(name) {
            None => {
                if required {
                    self.missing(name);
                }
                None
            }
            Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Some(s.clone()),
            Some(_) => {
                self.error(name, format!("must be a string of 1 to {max} bytes"));
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(super) fn int(&mut self, name: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.present(name)?;
        match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(name, format!("must be an integer from {min} to {max}"));
                None
            }
        }
    }

    /// An object of at most 4 KiB as JSON.
    pub(super) fn object(&mut self, name: &str) -> Option<Map<String, Value>> {
        let v = self.present(name)?;
        input::metadata(v).map_err(|m| self.error(name, m)).ok().flatten()
    }

    /// The raw value, for fields with their own rules.
    pub(super) fn raw(&self, name: &str) -> Option<&'a Value> {
        self.present(name)
    }

    pub(super) fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errors))
        }
    }
}

/// What a field or parameter that is not a currency code is told.
pub(super) const CURRENCY_ERROR: &str = "must be an ISO 4217 code such as CNY or USD";

/// Whether `c` is an ISO 4217 currency code as the API takes it: three capital letters.
pub(super) fn is_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}
