//! The one place where errors become HTTP answers.
//!
//! Every error leaves the server as `{"error": {"code", "message", "details"}}` with the status SPEC
//! assigns to its code. Internal errors (store failures) are logged here and answered as `unavailable`
//! with a generic message: internal text never reaches a client.

use http::StatusCode;
use serde_json::{Value, json};

use crate::store::StoreError;

/// The error codes of SPEC "Errors", each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    CodeTaken,
    PayloadTooLarge,
    ValidationFailed,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::CodeTaken => "code_taken",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ValidationFailed => "validation_failed",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::CodeTaken => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

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

    fn to_json(&self) -> Value {
        match self.index {
            Some(i) => json!({"index": i, "field": self.field, "message": self.message}),
            None => json!({"field": self.field, "message": self.message}),
        }
    }
}

/// An error answered to an API client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<Value>,
    /// Seconds to send as `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidJson, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }
    pub fn forbidden(scope: &str) -> Self {
        Self::new(ErrorCode::Forbidden, format!("this API key lacks the `{scope}` scope"))
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
    pub fn method_not_allowed() -> Self {
        Self::new(ErrorCode::MethodNotAllowed, "method not allowed on this path")
    }
    pub fn code_taken(code: &str) -> Self {
        Self::new(ErrorCode::CodeTaken, format!("the code `{code}` is already taken"))
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    }
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let message = match errors.as_slice() {
            [one] if one.index.is_none() => format!("{}: {}", one.field, one.message),
            _ => format!("{} invalid field(s)", errors.len()),
        };
        Self {
            code: ErrorCode::ValidationFailed,
            message,
            details: errors.iter().map(FieldError::to_json).collect(),
            retry_after: None,
        }
    }
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }
    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "the store is unavailable; retry shortly")
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Vec<u8> {
        let v = json!({"error": {
            "code": self.code.as_str(),
            "message": self.message,
            "details": self.details,
        }});
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CodesTaken(items) => {
                let errors = items
                    .into_iter()
                    .map(|(i, code)| FieldError {
                        index: Some(i),
                        field: "code".into(),
                        message: format!("the code `{code}` is already taken"),
                    })
                    .collect();
                Self {
                    code: ErrorCode::CodeTaken,
                    ..Self::validation(errors)
                }
            }
            other => {
                crate::metrics::STORE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %other, "store error");
                Self::unavailable()
            }
        }
    }
}
