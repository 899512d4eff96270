//! The one place where errors become HTTP answers.
//!
//! Every error leaves the server as `{"error": {"code", "message", "details"}}` with the status docs/API.md
//! assigns to its code. Internal errors (store failures) are logged here and answered as `unavailable`
//! with a generic message: internal text never reaches a client.

use http::header::{CACHE_CONTROL, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::body::Body;

pub(crate) use crate::field::FieldError;
use crate::store::StoreError;

/// The API's error codes (docs/API.md), each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    CodeTaken,
    /// The request conflicts with what is recorded (a commission not in the state asked, a
    /// refund past the order, an id used before for something else): nothing changed.
    Conflict,
    PayloadTooLarge,
    ValidationFailed,
    RateLimited,
    Unavailable,
    /// The embedded store's disk is full: nothing of the call was written.
    InsufficientStorage,
    /// A bug: a handler panicked. Counted, logged, and never detailed to the client.
    Internal,
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
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ValidationFailed => "validation_failed",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::InsufficientStorage => "insufficient_storage",
            Self::Internal => "internal",
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
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
    /// The methods the path takes, sent as `Allow` with a 405 (RFC 9110).
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            allow: None,
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
    /// A 405 naming the methods the path does take (`allow`, e.g. `"GET, POST"`).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                ErrorCode::MethodNotAllowed,
                format!("method not allowed on this path (allowed: {allow})"),
            )
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
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
            allow: None,
        }
    }
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "an internal error occurred; it has been logged")
    }
    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "the store is unavailable; retry shortly")
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The answer: the JSON body with the code's status (and `Retry-After` for rate limits).
    pub fn response(&self) -> Response<Body> {
        let mut r = crate::body::json(self.status(), self.body());
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        r
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

/// The public edge's own error pages: HTML for people who tapped a link, never cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeError {
    /// No link has this code (404).
    NotFound,
    /// The link is disabled or expired, and has no fallback (410).
    Gone,
    /// The store could not be read and nothing cached can answer (503).
    Unavailable,
    /// A short URL whose query string cannot go into a `Location` header (400).
    BadQuery,
    /// `/readyz` while shutting down (503).
    Draining,
    /// `/readyz` while the store does not answer (503).
    StoreUnreachable,
    /// Readiness: accepted events are not being written (held in memory, or refused).
    EventsUnwritten,
    /// A path the admin listener does not serve (404).
    NoRoute,
}

const NOT_FOUND_PAGE: &[u8] = b"<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Link not found</title></head><body><h1>Link not found</h1><p>This link does not exist. Check that it was copied completely.</p></body></html>\n";
/// A link that could not be read (its store, or on a Redis Cluster its slot's master, did not
/// answer): a page that asks the phone to try again in 2 s, by itself, which a failover outlasts.
/// The failed tap is not counted (its link was not known); the retry is.
const RETRY_PAGE: &[u8] = b"<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><meta http-equiv=\"refresh\" content=\"2\"><title>One moment</title></head><body><h1>One moment</h1><p>This link is briefly unavailable. The page tries again by itself.</p></body></html>\n";
/// Seconds of `Retry-After` (and of the page's refresh) on [`EdgeError::Unavailable`].
const RETRY_SECS: &str = "2";
const GONE_PAGE: &[u8] = b"<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Link expired</title></head><body><h1>This link has expired</h1><p>The offer behind it is no longer available.</p></body></html>\n";

/// Every answer of the edge carries it, so each tap reaches the server.
pub(crate) const NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");

impl EdgeError {
    pub(crate) fn response(self) -> Response<Body> {
        let mut r = match self {
            Self::NotFound => html(StatusCode::NOT_FOUND, NOT_FOUND_PAGE),
            Self::Gone => html(StatusCode::GONE, GONE_PAGE),
            Self::Unavailable => {
                let mut r = html(StatusCode::SERVICE_UNAVAILABLE, RETRY_PAGE);
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_SECS));
                r
            }
            Self::BadQuery => crate::body::text(StatusCode::BAD_REQUEST, "bad query string\n"),
            Self::Draining => crate::body::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            Self::StoreUnreachable => crate::body::text(StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n"),
            Self::EventsUnwritten => crate::body::text(StatusCode::SERVICE_UNAVAILABLE, "events not being written\n"),
            Self::NoRoute => crate::body::text(StatusCode::NOT_FOUND, "not found\n"),
        };
        r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
        r
    }
}

fn html(status: StatusCode, page: &'static [u8]) -> Response<Body> {
    crate::body::with_type(status, Body::from_static(page), "text/html; charset=utf-8")
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
            StoreError::Unwritable { disk_full: true } => Self::new(
                ErrorCode::InsufficientStorage,
                "the disk of linkgate's data directory is full: nothing was written; retry once it has room",
            ),
            // Counted by the API's dispatcher (`linkgate_store_errors_total`).
            other => {
                tracing::error!(error = %other, "store error");
                Self::unavailable()
            }
        }
    }
}
