//! CSV exports of paged lists (links, leads): every page of a filter, streamed.
//!
//! The first page is read before answering, so a store that is down gets a 503 JSON error. A
//! failure on a later page, after the 200 went out, aborts the transfer ([`crate::body::Chunk`]):
//! an SMS platform or a sales team then sees a failed download, never a file that silently lacks
//! rows.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use super::ApiResult;
use crate::body::Chunk;
use crate::error::FieldError;
use crate::store::StoreError;

/// A list's `format` parameter: `json` (false) or `csv` (true).
pub(crate) fn wants_csv(v: &str) -> Result<bool, FieldError> {
    match v {
        "json" => Ok(false),
        "csv" => Ok(true),
        _ => Err(FieldError::new("format", "must be json or csv")),
    }
}

/// One page of CSV rows and the cursor of the next page (`None`: the last).
pub(crate) type CsvPage = (Bytes, Option<u64>);

/// Streams `header` then the rows of every page `fetch(cursor)` answers, from cursor 0 on.
pub(crate) async fn csv<F, Fut>(header: &'static str, filename: &'static str, fetch: F) -> ApiResult
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<CsvPage, StoreError>> + Send,
{
    let first = fetch(0).await?;
    let (tx, body) = crate::body::stream(4);
    tokio::spawn(async move {
        if tx
            .send(Chunk::Data(Bytes::from_static(header.as_bytes())))
            .await
            .is_err()
        {
            return;
        }
        let mut page = first;
        loop {
            if tx.send(Chunk::Data(page.0)).await.is_err() {
                return;
            }
            let Some(cursor) = page.1 else {
                let _ = tx.send(Chunk::End).await;
                return;
            };
            page = match fetch(cursor).await {
                Ok(p) => p,
                Err(e) => {
                    // Dropping the sender without `End` aborts the response.
                    tracing::warn!(error = %e, "CSV export aborted: store read failed");
                    return;
                }
            };
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let disposition = format!("attachment; filename=\"{filename}\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
