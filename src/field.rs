//! One bad field of a request: the vocabulary every validator (links, codes, API fields) reports
//! in, and that [`crate::error`] renders as the `details` of a `validation_failed` answer.

use serde_json::{Value, json};

/// One bad field: which field, which bulk item (if any), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            index: None,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field as the error body's `details` show it.
    pub fn to_json(&self) -> Value {
        match self.index {
            Some(i) => json!({"index": i, "field": self.field, "message": self.message}),
            None => json!({"field": self.field, "message": self.message}),
        }
    }
}
