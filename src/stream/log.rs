//! Append-only JSON-lines files: the embedded-mode event log ([`EventLog`], rotated by size) and
//! the spool that holds events while Redis is unreachable ([`Spool`], replayed in order).
//!
//! Every append is one `write` followed by `fsync`, so an append that returned is on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::attribution::model::BatchId;
use crate::click::Event;

/// Size at which the event log starts a new file.
pub(crate) const LOG_ROTATE_BYTES: u64 = 64 * 1024 * 1024;

/// The event log's file number `index` in `dir`.
fn log_file(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("events-{index:06}.jsonl"))
}

/// The number of the newest `events-NNNNNN.jsonl` in `dir` (1 when there is none).
fn newest_file(dir: &Path) -> std::io::Result<u32> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("events-")?
                .strip_suffix(".jsonl")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(1))
}

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
        let index = newest_file(&dir)?;
        let path = log_file(&dir, index);
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
            let path = log_file(&self.dir, self.index);
            self.file = OpenOptions::new().create(true).append(true).open(path)?;
            self.size = 0;
        }
        append_whole(&mut self.file, self.size, buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// Appends `buf` to `file` (now `size` bytes long) and syncs it, or leaves the file as it was: a
/// write cut short (a full disk) is truncated away, so no torn line is ever left for a reader.
fn append_whole(file: &mut File, size: u64, buf: &[u8]) -> std::io::Result<()> {
    let written = file.write_all(buf).and_then(|()| file.sync_data());
    if written.is_err() {
        // Shrinking takes no space; a file that cannot even be shrunk reports the first error.
        let _ = file.set_len(size).and_then(|()| file.sync_data());
    }
    written
}

/// A position in the event log: a file's number and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogPos {
    pub file: u32,
    pub offset: u64,
}

/// Reads the event log from a position kept in `<data>/webhooks.cursor`: webhook delivery's
/// feed in embedded mode. Only whole lines are read (a line still being appended waits for the
/// next read); the position is saved ([`LogTail::commit`], written to a temporary file and
/// renamed) once what was read is stored elsewhere, so a restart reads on from there.
pub(crate) struct LogTail {
    dir: PathBuf,
    cursor: PathBuf,
    pos: LogPos,
    /// The position last saved, so saving it again costs no write.
    saved: Option<LogPos>,
}

impl LogTail {
    /// Opens the tail at its saved position, or at the log's end when none is saved.
    pub(crate) fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("events");
        std::fs::create_dir_all(&dir)?;
        let mut tail = Self {
            dir,
            cursor: data_dir.join("webhooks.cursor"),
            pos: LogPos { file: 1, offset: 0 },
            saved: None,
        };
        tail.pos = match std::fs::read_to_string(&tail.cursor) {
            Ok(text) => {
                let mut parts = text.split_whitespace().map(str::parse::<u64>);
                match (parts.next(), parts.next()) {
                    (Some(Ok(file)), Some(Ok(offset))) => {
                        let pos = LogPos {
                            file: u32::try_from(file).unwrap_or(1),
                            offset,
                        };
                        tail.saved = Some(pos);
                        pos
                    }
                    _ => tail.end()?,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tail.end()?,
            Err(e) => return Err(e),
        };
        Ok(tail)
    }

    fn file_path(&self, file: u32) -> PathBuf {
        log_file(&self.dir, file)
    }

    /// The end of the log now: the newest file and its size.
    pub(crate) fn end(&self) -> std::io::Result<LogPos> {
        let newest = newest_file(&self.dir)?;
        let size = match std::fs::metadata(self.file_path(newest)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(LogPos {
            file: newest,
            offset: size,
        })
    }

    /// Up to `max` whole lines from the position, each with the position after it. At the end of
    /// a file that has a successor, reading goes on in the successor.
    pub(crate) fn read(&mut self, max: usize) -> std::io::Result<Vec<(LogPos, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut pos = self.pos;
        loop {
            let file = match File::open(self.file_path(pos.file)) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if let Some(mut f) = file {
                f.seek(SeekFrom::Start(pos.offset))?;
                let mut reader = BufReader::new(f);
                let mut line = Vec::new();
                while out.len() < max {
                    line.clear();
                    let n = reader.read_until(b'\n', &mut line)?;
                    if n == 0 || line.last() != Some(&b'\n') {
                        break;
                    }
                    pos.offset += n as u64;
                    line.pop();
                    out.push((pos, line.clone()));
                }
            }
            if out.len() >= max || !self.file_path(pos.file + 1).exists() {
                break;
            }
            pos = LogPos {
                file: pos.file + 1,
                offset: 0,
            };
        }
        self.pos = pos;
        Ok(out)
    }

    /// Saves `pos` as where a restart reads on from.
    pub(crate) fn commit(&mut self, pos: LogPos) -> std::io::Result<()> {
        if self.saved == Some(pos) {
            return Ok(());
        }
        let tmp = self.cursor.with_extension("cursor.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{} {}\n", pos.file, pos.offset).as_bytes())?;
        f.sync_data()?;
        std::fs::rename(tmp, &self.cursor)?;
        self.saved = Some(pos);
        Ok(())
    }

    /// Moves the reading position to `pos` (back to the last committed one after a failure, or
    /// on to the end); [`LogTail::commit`] saves it.
    pub(crate) fn seek(&mut self, pos: LogPos) {
        self.pos = pos;
    }
}

/// A spool header line: the batch's id (`None` when it does not parse), its event count, and
/// the sequence numbers of its links (`seqs`, absent in spools written before it existed).
struct Header {
    id: Option<BatchId>,
    events: usize,
    seqs: Vec<(String, u64)>,
}

fn batch_header(line: &str) -> Option<Header> {
    if !line.starts_with("{\"lg_batch\":") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line.trim_end()).ok()?;
    let id = v["lg_batch"].as_str().and_then(BatchId::parse);
    let seqs = v["seqs"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(code, n)| Some((code.clone(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Some(Header {
        id,
        events: v["events"].as_u64().map_or(0, |n| n as usize),
        seqs,
    })
}

/// One batch read back from the spool.
#[derive(Debug, Default)]
pub struct Spooled {
    /// Its id; `None` for lines spooled before batches had ids.
    pub id: Option<BatchId>,
    /// Its links' sequence numbers, so the replay counts its taps where the first attempt did
    /// (a link's counter array rather than its hash): on a Redis Cluster each of a batch's
    /// counter groups is applied once by its own mark, so a replay must group them alike.
    pub seqs: Vec<(String, u64)>,
    pub events: Vec<Event>,
    /// The spool position after it.
    pub end: u64,
}

/// `<data>/deadletter.jsonl`: commands the store refused for good, one JSON object per line
/// (`ts`, `batch`, `command`, `error`). The rest of their batch applied; an operator fixes the key
/// (a counter of the wrong type, say) and, if the counts matter, re-applies the commands.
pub(crate) struct DeadLetters {
    file: File,
}

impl DeadLetters {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("deadletter.jsonl"))?;
        Ok(Self { file })
    }

    /// Appends the refused commands of `batch`, durably.
    pub(crate) fn append(&mut self, batch: &BatchId, refused: &[super::Refused], ts: i64) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for r in refused {
            let line = serde_json::json!({
                "ts": crate::time::format_rfc3339(ts),
                "batch": batch.to_string(),
                "command": r.command,
                "error": r.error,
            });
            serde_json::to_writer(&mut buf, &line).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
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
        append_whole(&mut self.file, self.size, buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// The directory the spool lives in.
    pub(crate) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Reads the next batch from the replay position: its id (from its header line,
    /// [`super::Batch::spool_lines`]) and events, and the position after them. Lines without a
    /// header (a spool written before batches had ids) come back in runs of at most `max`, with no
    /// id. A line that does not parse (a torn write) is skipped.
    pub fn read_batch(&self, max: usize) -> std::io::Result<Spooled> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(f);
        let mut out = Spooled {
            end: self.offset,
            ..Spooled::default()
        };
        let mut line = String::new();
        let mut want = max;
        while out.events.len() < want {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            if let Some(header) = batch_header(&line) {
                if out.end > self.offset {
                    break; // the next batch starts here
                }
                out.end += n as u64;
                (out.id, want, out.seqs) = (header.id, header.events, header.seqs);
                continue;
            }
            out.end += n as u64;
            match serde_json::from_str::<Event>(line.trim_end()) {
                Ok(e) => out.events.push(e),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable spool line"),
            }
        }
        Ok(out)
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

    /// The tail reads whole lines across rotated files, never a line still being written, and a
    /// reopened tail goes on from the committed position (a fresh one starts at the end).
    #[test]
    fn the_log_tail_reads_whole_lines_across_files_from_its_saved_position() {
        let dir = std::env::temp_dir().join(format!("linkgate-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = EventLog::open(&dir, 10).unwrap();
        log.append(b"{\"id\":\"old\"}\n").unwrap();
        let mut tail = LogTail::open(&dir).unwrap();
        assert!(tail.read(10).unwrap().is_empty(), "a fresh tail starts at the end");
        // Each append past 10 bytes starts a new file.
        log.append(b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n").unwrap();
        log.append(b"{\"id\":\"c\"}\n").unwrap();
        let got = tail.read(2).unwrap();
        assert_eq!(
            got.iter().map(|(_, l)| l.as_slice()).collect::<Vec<_>>(),
            [&b"{\"id\":\"a\"}"[..], b"{\"id\":\"b\"}"]
        );
        tail.commit(got[1].0).unwrap();
        // A torn line (no newline yet) waits.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("events").join(format!("events-{:06}.jsonl", log.index)))
            .unwrap()
            .write_all(b"{\"id\":")
            .unwrap();
        let got = tail.read(10).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, b"{\"id\":\"c\"}");
        // Not committed: a reopened tail reads `c` again.
        let mut again = LogTail::open(&dir).unwrap();
        let got = again.read(10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"{\"id\":\"c\"}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `events` as the lines the batcher spools for batch `seq`.
    fn lines(seq: u64, events: &[Event]) -> Vec<u8> {
        let mut batch = crate::stream::Batch::default();
        batch.id = BatchId {
            replica: "r1".into(),
            seq,
        };
        for e in events {
            batch.push_event(e);
        }
        batch.spool_lines()
    }

    fn ev(i: usize) -> Event {
        Event::new(format!("e{i}"), EventType::Click, 0)
    }

    #[test]
    fn spool_replays_batches_in_order_with_their_ids_and_truncates_when_done() {
        let dir = std::env::temp_dir().join(format!("linkgate-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Spool::open(&dir).unwrap();
        assert!(!s.pending());
        s.append(&lines(7, &(0..3).map(ev).collect::<Vec<_>>())).unwrap();
        s.append(&lines(8, &(3..5).map(ev).collect::<Vec<_>>())).unwrap();
        let Spooled {
            id,
            events: first,
            end: pos,
            ..
        } = s.read_batch(100).unwrap();
        assert_eq!(id.map(|i| i.seq), Some(7));
        let ids: Vec<_> = first.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e0", "e1", "e2"], "one batch at a time");
        s.advance(pos).unwrap();
        drop(s);
        // A restart starts replay from the beginning of what is left in the file, under the
        // same ids, so the store can tell what already landed.
        let mut s = Spool::open(&dir).unwrap();
        let again = s.read_batch(100).unwrap();
        assert_eq!((again.id.map(|i| i.seq), again.events.len()), (Some(7), 3));
        let mut pos = 0;
        let mut seqs = Vec::new();
        while s.pending() {
            let next = s.read_batch(100).unwrap();
            seqs.push(next.id.unwrap().seq);
            pos = next.end;
            s.advance(pos).unwrap();
        }
        assert_eq!(seqs, [7, 8]);
        assert!(pos > 0 && !s.pending());
        assert_eq!(std::fs::metadata(dir.join("spool.jsonl")).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_without_a_header_replay_without_an_id() {
        let dir = std::env::temp_dir().join(format!("linkgate-spool-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Spool::open(&dir).unwrap();
        let mut legacy = crate::stream::Batch::default();
        legacy.push_event(&ev(0));
        legacy.push_event(&ev(1));
        s.append(&legacy.lines()).unwrap();
        s.append(&lines(3, &[ev(2)])).unwrap();
        let legacy = s.read_batch(100).unwrap();
        assert_eq!((legacy.id, legacy.events.len()), (None, 2), "up to the next header");
        s.advance(legacy.end).unwrap();
        let next = s.read_batch(100).unwrap();
        assert_eq!((next.id.map(|i| i.seq), next.events.len()), (Some(3), 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
