//! The ledger's local journal. Every ledger write that no one waits for is appended here (one
//! `write` of one JSON line) before the request goes on; the ledger's writer then commits it to
//! the store in batches. So a request is answered without waiting for the database and is
//! still never missing from the ledger: if the process dies, the next process that opens the
//! same journal directory writes what was journaled but not committed, then settles whatever
//! is still reserved as `server_crashed`.
//!
//! Durability: appends are not fsynced. They survive the process being killed (the kernel holds
//! them), not the machine losing power — the same promise as SQLite's WAL with
//! `synchronous=NORMAL`, which the store uses.
//!
//! Layout: `DIR/INSTANCE.lock`, held with an exclusive file lock for the life of the process
//! (a lock that can be taken means its owner is gone), and segments `DIR/INSTANCE.SEQ.journal`.
//! A segment is emptied or deleted once everything in it is committed; a new one starts when
//! the current one grows past [`SEGMENT_BYTES`] while writes are still outstanding.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sluice_store::{Reservation, Settlement, Store, StoreError};

/// A segment this large starts a new one.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Records restored per transaction.
const RESTORE_BATCH: usize = 2_000;

/// One journaled ledger write.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// A reservation row (holding no budget).
    Reserve(Reservation),
    /// A settlement.
    Settle(Settlement),
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    file: File,
    bytes: u64,
    outstanding: usize,
}

#[derive(Debug)]
struct Segments {
    current: Segment,
    /// Outstanding writes of earlier segments, by sequence number.
    closed: BTreeMap<u64, usize>,
}

/// The journal of this process.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    instance: String,
    _lock: File,
    segments: Mutex<Segments>,
}

fn segment_path(dir: &Path, instance: &str, seq: u64) -> PathBuf {
    dir.join(format!("{instance}.{seq:08}.journal"))
}

fn open_segment(dir: &Path, instance: &str, seq: u64) -> std::io::Result<Segment> {
    let file = OpenOptions::new().create(true).append(true).open(segment_path(dir, instance, seq))?;
    Ok(Segment { seq, file, bytes: 0, outstanding: 0 })
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("ledger journal: cannot {what} {}: {e}", path.display()))
}

impl Journal {
    /// Creates `dir` if needed and this process's lock and first segment in it.
    pub fn open(dir: &Path, instance: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let lock_path = dir.join(format!("{instance}.lock"));
        let lock = File::create(&lock_path).map_err(|e| io_error("create", &lock_path, e))?;
        lock.try_lock().map_err(|e| io_error("lock", &lock_path, e))?;
        let current = open_segment(dir, instance, 0).map_err(|e| io_error("create a segment in", dir, e))?;
        Ok(Self { dir: dir.to_path_buf(), instance: instance.to_string(), _lock: lock, segments: Mutex::new(Segments { current, closed: BTreeMap::new() }) })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process it belongs to.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Appends one record; returns the segment holding it, to be passed to
    /// [`Journal::committed`] once the store has it.
    pub fn append(&self, record: &Record) -> std::io::Result<u64> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut s = self.segments.lock().map_err(|_| std::io::Error::other("journal lock poisoned"))?;
        if s.current.bytes >= SEGMENT_BYTES && s.current.outstanding > 0 {
            let next = open_segment(&self.dir, &self.instance, s.current.seq + 1)?;
            let old = std::mem::replace(&mut s.current, next);
            s.closed.insert(old.seq, old.outstanding);
        }
        s.current.file.write_all(&line)?;
        s.current.bytes += line.len() as u64;
        s.current.outstanding += 1;
        Ok(s.current.seq)
    }

    /// Marks `n` records of segment `seq` as committed to the store; a segment left with none
    /// outstanding is emptied (the current one) or deleted (an earlier one).
    pub fn committed(&self, seq: u64, n: usize) {
        let Ok(mut s) = self.segments.lock() else { return };
        if s.current.seq == seq {
            s.current.outstanding = s.current.outstanding.saturating_sub(n);
            if s.current.outstanding == 0 && s.current.bytes > 0 {
                match s.current.file.set_len(0) {
                    Ok(()) => s.current.bytes = 0,
                    Err(e) => tracing::warn!(error = %e, "cannot empty the ledger journal"),
                }
            }
            return;
        }
        let Some(left) = s.closed.get_mut(&seq) else { return };
        *left = left.saturating_sub(n);
        if *left == 0 {
            s.closed.remove(&seq);
            let path = segment_path(&self.dir, &self.instance, seq);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot delete a committed ledger journal segment");
            }
        }
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Journals of stopped processes found.
    pub journals: usize,
    /// Records read from them.
    pub records: usize,
    /// Settlements that were not in the store yet.
    pub settled: u64,
    /// Lines that could not be read (a torn last write, or damage).
    pub unreadable: usize,
}

/// Reads a segment: its records, and how many lines could not be read.
fn read_segment(path: &Path) -> Result<(Vec<Record>, usize), StoreError> {
    let bytes = std::fs::read(path).map_err(|e| io_error("read", path, e))?;
    let mut records = Vec::new();
    let mut bad = 0;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((records, bad))
}

/// Writes into the store what stopped processes journaled in `dir` (all but `me`), then removes
/// their journals. A journal with unreadable lines is kept, renamed `*.damaged`, for a person.
pub async fn restore(dir: &Path, me: &str, store: &Store) -> Result<Restored, StoreError> {
    let mut out = Restored::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_error("list", dir, e)),
    };
    let mut locks: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix(".lock")?.to_string();
            (name != me).then_some((name, p))
        })
        .collect();
    locks.sort();
    for (instance, lock_path) in locks {
        let Ok(lock) = File::open(&lock_path) else { continue };
        if lock.try_lock().is_err() {
            continue; // its process is alive
        }
        out.journals += 1;
        let prefix = format!("{instance}.");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io_error("list", dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".journal")))
            .collect();
        segments.sort();
        for path in segments {
            let (records, bad) = read_segment(&path)?;
            out.records += records.len();
            for chunk in records.chunks(RESTORE_BATCH) {
                let mut reservations = Vec::new();
                let mut settlements = Vec::new();
                for r in chunk {
                    match r {
                        Record::Reserve(x) => reservations.push(x.clone()),
                        Record::Settle(x) => settlements.push(x.clone()),
                    }
                }
                out.settled += store.restore(&reservations, &settlements).await?;
            }
            if bad > 0 {
                out.unreadable += bad;
                let kept = path.with_extension("journal.damaged");
                tracing::error!(path = %kept.display(), lines = bad, "unreadable lines in a ledger journal; the file is kept");
                std::fs::rename(&path, &kept).map_err(|e| io_error("rename", &path, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| io_error("delete", &path, e))?;
            }
        }
        std::fs::remove_file(&lock_path).map_err(|e| io_error("delete", &lock_path, e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn settlement(id: &str) -> Settlement {
        Settlement { request_id: id.into(), outcome: "ok".into(), status: 200, ..Default::default() }
    }

    #[test]
    fn a_segment_is_emptied_once_everything_in_it_is_committed() {
        let dir = std::env::temp_dir().join(format!("sluice-journal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(&dir, "proc_a").unwrap();
        let seg = j.append(&Record::Settle(settlement("r1"))).unwrap();
        j.append(&Record::Settle(settlement("r2"))).unwrap();
        let path = segment_path(&dir, "proc_a", seg);
        let (records, bad) = read_segment(&path).unwrap();
        assert_eq!((records.len(), bad), (2, 0));
        j.committed(seg, 1);
        assert!(std::fs::metadata(&path).unwrap().len() > 0, "one write is still outstanding");
        j.committed(seg, 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // A second open of the same instance's lock fails while this one holds it.
        assert!(Journal::open(&dir, "proc_a").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_counted_not_fatal() {
        let dir = std::env::temp_dir().join(format!("sluice-journal-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.00000000.journal");
        let mut line = serde_json::to_vec(&Record::Settle(settlement("r1"))).unwrap();
        line.extend_from_slice(b"\n{\"settle\":{\"request_id\":\"r2\",\"back");
        std::fs::write(&path, line).unwrap();
        let (records, bad) = read_segment(&path).unwrap();
        assert_eq!((records.len(), bad), (1, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
