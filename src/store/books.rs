//! Running the ledger's decisions against a store: read a book, decide, and write the change only
//! if the book is still at the version read (else read again), so concurrent calls on one book,
//! on any replica, apply one after the other. Statements are slices of a book found by time.

use super::{BookRead, CommissionStore, StoreError};
use crate::commission::ledger::Refusal;
use crate::commission::{BookKey, BookView, Change, Entry};

/// How often a decision is retried when the book keeps moving under it.
const MAX_ATTEMPTS: usize = 32;

/// Reads `book` as `read` asks, decides with `decide`, and applies its change at the version
/// read; returns what `decide` returned, or its refusal (nothing written).
pub(crate) async fn apply<T>(
    store: &dyn CommissionStore,
    book: &BookKey,
    read: BookRead<'_>,
    markers: &[String],
    mut decide: impl FnMut(&BookView) -> Result<(Change, T), Refusal>,
) -> Result<Result<T, Refusal>, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let view = store.read_book(book, read, markers).await?;
        let (change, out) = match decide(&view) {
            Ok(x) => x,
            Err(r) => return Ok(Err(r)),
        };
        if change.is_empty() || store.write_book(book, view.version, &change).await? {
            return Ok(Ok(out));
        }
    }
    Err(StoreError::Contended(format!(
        "the commission book of `{}` kept changing",
        book.partner
    )))
}

/// A statement: the balance before `from`, the entries in `[from, to)`, the balance after them.
pub(crate) struct Statement {
    pub opening: i64,
    pub entries: Vec<Entry>,
    pub closing: i64,
}

/// The entries of `book` with `from <= at < to` (either bound open), found by binary search on
/// time (a book's entries are ordered by time), read in one range.
pub(crate) async fn statement(
    store: &dyn CommissionStore,
    book: &BookKey,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Statement, StoreError> {
    let len = store.ledger_len(book).await?;
    let lo = match from {
        Some(t) => first_at_or_after(store, book, len, t).await?,
        None => 0,
    };
    let hi = match to {
        Some(t) => first_at_or_after(store, book, len, t).await?.max(lo),
        None => len,
    };
    let opening = if lo == 0 {
        0
    } else {
        store
            .ledger_range(book, lo - 1, lo)
            .await?
            .first()
            .map_or(0, |e| e.balance)
    };
    let entries = if hi > lo {
        store.ledger_range(book, lo, hi).await?
    } else {
        Vec::new()
    };
    let closing = entries.last().map_or(opening, |e| e.balance);
    Ok(Statement {
        opening,
        entries,
        closing,
    })
}

/// The index of the first entry at `t` or later (`len` when none).
async fn first_at_or_after(store: &dyn CommissionStore, book: &BookKey, len: u64, t: i64) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (0u64, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at = store
            .ledger_range(book, mid, mid + 1)
            .await?
            .first()
            .map_or(i64::MAX, |e| e.at);
        if at < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
