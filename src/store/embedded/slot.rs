//! The embedded store's database handle, reopened after an I/O error.
//!
//! After an I/O error (a full disk, above all) redb refuses every later call until the database
//! is closed and opened again ("Previous I/O error occurred"). So a call that fails with one marks
//! the handle broken, and one thread reopens it: it takes the handle away (calls then answer
//! [`StoreError::Unwritable`] at once: `/readyz` 503, minting 507 when the disk is full), waits for
//! the calls in flight to finish, closes the database and opens it again (reads resume), then
//! writes a probe file beside it, on a back-off from 250 ms to 5 s, until the disk has room again:
//! only then is the store ready again. Nothing acknowledged is lost: an acknowledged write is a committed, fsynced transaction,
//! and opening recovers the file to its last commit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

use super::StoreError;

/// First and longest pause between attempts to reopen.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// How long a reopen waits for the calls in flight on the old handle.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// Opens the database at a path and writes to it once (creating its tables): the probe.
pub(super) type Opener = fn(&std::path::Path) -> Result<Database, StoreError>;

pub(super) struct Slot {
    path: PathBuf,
    open: Opener,
    db: RwLock<Option<Arc<Database>>>,
    /// The handle failed with an I/O error and must be closed and opened again.
    broken: AtomicBool,
    /// The last probe found room to write ([`probe_space`]): readiness.
    writable: AtomicBool,
    /// A reopen thread is running.
    reopening: AtomicBool,
    /// The last I/O error was a full disk.
    disk_full: AtomicBool,
}

/// Whether `e` is an I/O failure of the database (which redb wants closed and opened again), and
/// whether the disk was full.
fn io_failure(e: &StoreError) -> Option<bool> {
    match e {
        StoreError::Embedded(redb::Error::Io(io)) => Some(is_disk_full(io)),
        StoreError::Embedded(redb::Error::PreviousIo) => Some(false),
        _ => None,
    }
}

/// `ENOSPC` or `EDQUOT`.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

/// Room the data directory must have to count as writable: a redb commit that grows the file
/// and a few batches of the event log fit in it.
const PROBE_BYTES: usize = 256 << 10;

/// Writes, syncs and removes a file of [`PROBE_BYTES`] beside the database. A commit that only
/// rewrites pages the file already has can succeed on a full disk; this cannot.
fn probe_space(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".linkgate-write-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    written
}

impl Slot {
    /// Opens the database. A full disk (or another I/O error) at start is not fatal: the store
    /// starts unwritable and heals once it can, so a replica restarted on a full disk comes up
    /// (not ready) and heals by itself.
    pub(super) fn open(path: PathBuf, open: Opener) -> Result<Arc<Self>, StoreError> {
        let slot = Arc::new(Self {
            path,
            open,
            db: RwLock::new(None),
            broken: AtomicBool::new(false),
            writable: AtomicBool::new(false),
            reopening: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
        });
        match (slot.open)(&slot.path) {
            Ok(db) => *slot.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db)),
            Err(e) => match io_failure(&e) {
                Some(full) => {
                    tracing::error!(error = %e, "the embedded store cannot write at start; not ready until it can");
                    slot.disk_full.store(full, Ordering::Relaxed);
                    slot.broken.store(true, Ordering::Relaxed);
                }
                None => return Err(e),
            },
        }
        if !slot.broken.load(Ordering::Relaxed) && slot.probe() {
            slot.writable.store(true, Ordering::Relaxed);
        } else {
            slot.start_reopening();
        }
        Ok(slot)
    }

    fn dir(&self) -> &std::path::Path {
        self.path.parent().unwrap_or(std::path::Path::new("."))
    }

    /// Whether the data directory has room; a full disk is remembered.
    fn probe(&self) -> bool {
        match probe_space(self.dir()) {
            Ok(()) => true,
            Err(e) => {
                self.disk_full.store(is_disk_full(&e), Ordering::Relaxed);
                false
            }
        }
    }

    /// The database, unless it is being reopened.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Unwritable {
                disk_full: self.disk_full.load(Ordering::Relaxed),
            })
    }

    /// Readiness: [`StoreError::Unwritable`] until a probe finds room to write.
    pub(super) fn check_writable(&self) -> Result<(), StoreError> {
        if self.writable.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(StoreError::Unwritable {
                disk_full: self.disk_full.load(Ordering::Relaxed),
            })
        }
    }

    /// What a failed call answers: an I/O failure starts a reopen and becomes
    /// [`StoreError::Unwritable`]; anything else is passed on.
    pub(super) fn failed(self: &Arc<Self>, e: StoreError) -> StoreError {
        let Some(full) = io_failure(&e) else { return e };
        if full {
            self.disk_full.store(true, Ordering::Relaxed);
        }
        self.writable.store(false, Ordering::Relaxed);
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "the embedded store failed to write; reopening it");
        }
        self.start_reopening();
        StoreError::Unwritable {
            disk_full: self.disk_full.load(Ordering::Relaxed),
        }
    }

    fn start_reopening(self: &Arc<Self>) {
        if self.reopening.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.clone();
        let spawned = std::thread::Builder::new()
            .name("linkgate-reopen".into())
            .spawn(move || slot.heal());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the embedded store's reopen thread");
            self.reopening.store(false, Ordering::Release);
        }
    }

    /// Reopens a broken handle, then probes until the disk has room, on a back-off; goes round
    /// again when a call broke the handle meanwhile.
    fn heal(&self) {
        let mut pause = FIRST_PAUSE;
        let mut attempts = 0u32;
        loop {
            if self.broken.swap(false, Ordering::AcqRel) {
                self.close();
            }
            if self.db.read().unwrap_or_else(|e| e.into_inner()).is_none() {
                match (self.open)(&self.path) {
                    Ok(db) => *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db)),
                    Err(e) => {
                        if let Some(full) = io_failure(&e) {
                            self.disk_full.store(full, Ordering::Relaxed);
                        }
                        if attempts.is_multiple_of(60) {
                            tracing::warn!(error = %e, attempts, "the embedded store cannot be opened yet");
                        }
                    }
                }
            }
            let open = self.db.read().unwrap_or_else(|e| e.into_inner()).is_some();
            if open && !self.broken.load(Ordering::Acquire) && self.probe() {
                self.disk_full.store(false, Ordering::Relaxed);
                self.writable.store(true, Ordering::Relaxed);
                self.reopening.store(false, Ordering::Release);
                // A call that broke the handle just now found the thread still running.
                if self.broken.load(Ordering::Acquire) && !self.reopening.swap(true, Ordering::AcqRel) {
                    continue;
                }
                tracing::warn!(attempts, "the embedded store writes again");
                return;
            }
            attempts += 1;
            std::thread::sleep(pause);
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// Takes the handle away, waits for the calls still holding it, and closes it.
    fn close(&self) {
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(old) = old {
            let deadline = Instant::now() + DRAIN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
    }
}
