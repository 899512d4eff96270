//! Append-only JSON-lines files: the embedded-mode event log ([`EventLog`], rotated by size) and
//! the spool that holds events while Redis is unreachable ([`Spool`], replayed in order).
//!
//! Every append is one `write` followed by `fsync`, so an append that returned is on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::click::Event;

/// Size at which the event log starts a new file.
pub(crate) const LOG_ROTATE_BYTES: u64 = 64 * 1024 * 1024;

/// `events-000001.jsonl`, `events-000002.jsonl`, … in `<data>/events/`.
pub(crate) struct EventLog {
    dir: PathBuf,
    file: File,
    index: u32,
    size: u64,
    rotate_at: u64,
}

impl EventLog {
    pub(crate) fn open(data_dir: &Path, rotate_at: u64) -> std::io::Result<Self> {
        let dir = data_dir.join("events");
        std::fs::create_dir_all(&dir)?;
        let index = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("events-")?
                    .strip_suffix(".jsonl")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(1);
        let path = dir.join(format!("events-{index:06}.jsonl"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir,
            file,
            index,
            size,
            rotate_at,
        })
    }

    /// Appends JSON lines (see [`super::Batch::lines`]).
    pub(crate) fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.size >= self.rotate_at {
            self.index += 1;
            let path = self.dir.join(format!("events-{:06}.jsonl", self.index));
            self.file = OpenOptions::new().create(true).append(true).open(path)?;
            self.size = 0;
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// `<data>/spool.jsonl`: events not yet delivered, oldest first. `offset` is how far replay got.
pub struct Spool {
    path: PathBuf,
    file: File,
    offset: u64,
    size: u64,
}

impl Spool {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("spool.jsonl");
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            offset: 0,
            size,
        })
    }

    /// Whether events wait for replay.
    pub fn pending(&self) -> bool {
        self.size > self.offset
    }

    /// Bytes waiting for replay.
    pub fn pending_bytes(&self) -> u64 {
        self.size - self.offset
    }

    /// Appends JSON lines (see [`super::Batch::lines`]).
    pub fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Reads up to `max` events from the replay position; returns them and the position after them.
    /// A line that does not parse (a torn write) is skipped.
    pub fn read(&self, max: usize) -> std::io::Result<(Vec<Event>, u64)> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(f);
        let mut out = Vec::new();
        let mut pos = self.offset;
        let mut line = String::new();
        while out.len() < max {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            pos += n as u64;
            match serde_json::from_str::<Event>(line.trim_end()) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable spool line"),
            }
        }
        Ok((out, pos))
    }

    /// Marks everything before `pos` delivered; an emptied spool is truncated.
    pub fn advance(&mut self, pos: u64) -> std::io::Result<()> {
        self.offset = pos;
        if self.offset >= self.size {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.offset = 0;
            self.size = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::EventType;

    /// `events` as the JSON lines the batcher appends.
    fn lines(events: &[Event]) -> Vec<u8> {
        let mut batch = crate::stream::Batch::default();
        for e in events {
            batch.push_event(e);
        }
        batch.lines()
    }

    fn ev(i: usize) -> Event {
        Event::new(format!("e{i}"), EventType::Click, 0)
    }

    #[test]
    fn spool_replays_in_order_and_truncates_when_done() {
        let dir = std::env::temp_dir().join(format!("linkgate-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Spool::open(&dir).unwrap();
        assert!(!s.pending());
        s.append(&lines(&(0..5).map(ev).collect::<Vec<_>>())).unwrap();
        let (first, pos) = s.read(3).unwrap();
        assert_eq!(
            first.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["e0", "e1", "e2"]
        );
        s.advance(pos).unwrap();
        s.append(&lines(&[ev(5)])).unwrap();
        drop(s);
        // A restart starts replay from the beginning of what is left in the file.
        let mut s = Spool::open(&dir).unwrap();
        let (rest, pos) = s.read(100).unwrap();
        assert_eq!(
            rest.len(),
            6,
            "at-least-once: undelivered and possibly delivered events replay"
        );
        s.advance(pos).unwrap();
        assert!(!s.pending());
        assert_eq!(std::fs::metadata(dir.join("spool.jsonl")).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
