//! The response body: a whole buffer (nearly every answer) or a stream of chunks (CSV exports).
//! An enum instead of a boxed trait object keeps the redirect path free of allocations for the body.
//!
//! A stream ends cleanly only when its producer says so ([`Chunk::End`]). If the producer fails
//! or goes away first, the body ends with an error, so hyper aborts the transfer (no final chunk)
//! and the client sees a broken download instead of a short file that looks complete.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// The error type request bodies convert into.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Full(Option<Bytes>),
    Stream { rx: mpsc::Receiver<Chunk>, ended: bool },
}

/// What a streamed body's producer sends.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// Everything was sent: the transfer may end cleanly.
    End,
}

/// A streamed body whose producer stopped without [`Chunk::End`].
#[derive(Debug, thiserror::Error)]
#[error("the response stream was cut short by its producer")]
pub struct StreamAborted;

/// A streamed body and the sender its producer writes to (at most `depth` chunks in flight).
pub(crate) fn stream(depth: usize) -> (mpsc::Sender<Chunk>, Body) {
    let (tx, rx) = mpsc::channel(depth);
    (tx, Body::Stream { rx, ended: false })
}

impl Body {
    pub fn empty() -> Self {
        Body::Full(None)
    }

    pub fn from_static(s: &'static [u8]) -> Self {
        Body::Full(Some(Bytes::from_static(s)))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Full(Some(v.into()))
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(Some(b))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream { ended: true, .. } => Poll::Ready(None),
            Body::Stream { rx, ended } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Chunk::Data(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Chunk::End)) => {
                    *ended = true;
                    Poll::Ready(None)
                }
                // The producer is gone without saying it finished.
                Poll::Ready(None) => {
                    *ended = true;
                    Poll::Ready(Some(Err(StreamAborted)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None) | Body::Stream { ended: true, .. })
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(status, Body::from_static(body.as_bytes()), "text/plain; charset=utf-8")
}

/// A JSON answer (`body` is already encoded).
pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    with_type(status, Body::from(body), "application/json")
}

/// An answer of `status` with `body` of `content_type`.
pub(crate) fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Quotes a CSV cell when needed, and defuses spreadsheet formulas (`=`, `+`, `-`, `@` first).
pub(crate) fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_stream_ends_cleanly_only_when_its_producer_says_so() {
        let (tx, body) = stream(4);
        tx.send(Chunk::Data(Bytes::from_static(b"a,b\n"))).await.unwrap();
        tx.send(Chunk::End).await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "a,b\n");

        let (tx, body) = stream(4);
        tx.send(Chunk::Data(Bytes::from_static(b"a,b\n"))).await.unwrap();
        drop(tx); // a failed or panicked producer
        assert!(
            body.collect().await.is_err(),
            "a cut-short stream is an error, not a short file"
        );
    }

    /// Reads one CSV cell back the way a spreadsheet does (RFC 4180 quoting).
    fn read_cell(cell: &str) -> String {
        match cell.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
            Some(inner) => inner.replace("\"\"", "\""),
            None => cell.to_string(),
        }
    }

    proptest::proptest! {
        #[test]
        fn cells_read_back_as_written_and_never_as_formulas(s in "\\PC{0,30}|[=+@-][ -~]{0,10}|[\",\r\n]{0,4}") {
            let cell = csv_cell(&s);
            let back = read_cell(&cell);
            proptest::prop_assert!(!back.starts_with(['=', '+', '-', '@']), "{:?}", cell);
            let want = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.clone() };
            proptest::prop_assert_eq!(&back, &want);
            if !cell.starts_with('"') {
                proptest::prop_assert!(!cell.contains([',', '"', '\n', '\r']), "{:?}", cell);
            }
        }
    }
}
