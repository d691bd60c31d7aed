//! The commit log of a transactional shadow: `log/NNNNNNNNNN.log` holds, in order, every
//! commit the shadow saw after point NNNNNNNNNN, each with its time, so any commit between
//! two points is a restore target.
//!
//! A segment is a sequence of records:
//!
//! ```text
//! magic "BWLR" | payload length u32 LE | time i64 LE (µs since the epoch) | SHA-256 (32) | payload
//! ```
//!
//! where the SHA-256 covers the previous record's SHA-256 (zeros for the first), the time and
//! the payload: a chain, so a damaged, reordered or removed record is detected. The payload
//! is the kind's own encoding of the commit (SQLite: the pages it wrote). A record cut short
//! at the end of the last segment (the follower died while appending) is ignored; anything
//! else that does not check is an error naming the segment and the byte.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ShadowError, Timestamp};

const MAGIC: &[u8; 4] = b"BWLR";
const HEADER: usize = 4 + 4 + 8 + 32;
/// A record's payload is at most this long (a SQLite commit of 1 GiB of pages).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// One logged commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub at: Timestamp,
    pub payload: Vec<u8>,
    /// Where the record starts in its segment.
    pub offset: u64,
}

/// Appends records to one segment. Records are buffered by [`LogWriter::append`] and made
/// durable by [`LogWriter::flush`] (one `fdatasync` per batch).
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    /// `None` until the first flush of a segment made by [`LogWriter::fresh`].
    file: Option<File>,
    prev: [u8; 32],
    len: u64,
    pending: Vec<u8>,
    records: u64,
}

impl LogWriter {
    /// Opens (or creates) the segment at `path`, checking the records already there and
    /// cutting a torn tail.
    pub(crate) fn open(path: &Path) -> Result<LogWriter, ShadowError> {
        let (records, prev, good_len) = scan(path, true)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(ShadowError::io(path))?;
        let on_disk = file.metadata().map_err(ShadowError::io(path))?.len();
        if on_disk > good_len {
            file.set_len(good_len).map_err(ShadowError::io(path))?;
        }
        Ok(LogWriter {
            path: path.to_owned(),
            file: Some(file),
            prev,
            len: good_len,
            pending: Vec::new(),
            records: records.len() as u64,
        })
    }

    /// A writer of a segment that holds nothing yet (the point it follows was just
    /// committed): the file is made by the first flush, replacing whatever a crashed
    /// follower may have left under that name (no point can have logged there).
    pub(crate) fn fresh(path: &Path) -> LogWriter {
        LogWriter {
            path: path.to_owned(),
            file: None,
            prev: [0; 32],
            len: 0,
            pending: Vec::new(),
            records: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records logged so far in this segment (flushed or not).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of the segment (flushed or not).
    pub fn len(&self) -> u64 {
        self.len + self.pending.len() as u64
    }

    /// Whether the segment holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The chained SHA-256 of the last record appended (zeros when there is none).
    pub fn last_sum(&self) -> [u8; 32] {
        self.prev
    }

    /// Adds a commit with its time; durable after the next [`LogWriter::flush`].
    pub fn append(&mut self, at: Timestamp, payload: &[u8]) {
        let sum = chain(&self.prev, at, payload);
        self.pending.extend_from_slice(MAGIC);
        self.pending
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&at.0.to_le_bytes());
        self.pending.extend_from_slice(&sum);
        self.pending.extend_from_slice(payload);
        self.prev = sum;
        self.records += 1;
    }

    /// Writes the buffered records and syncs them.
    pub fn flush(&mut self) -> Result<(), ShadowError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&self.path)
                    .map_err(ShadowError::io(&self.path))?,
            ),
        };
        file.write_all(&self.pending)
            .and_then(|()| file.sync_data())
            .map_err(ShadowError::io(&self.path))?;
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

fn chain(prev: &[u8; 32], at: Timestamp, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(at.0.to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// Reads every whole record of a segment (a missing segment has none). `tolerate_tail`
/// accepts a record cut short at the end; returns the records, the last checksum and the
/// length of the whole records.
pub(crate) fn scan(
    path: &Path,
    tolerate_tail: bool,
) -> Result<(Vec<LogRecord>, [u8; 32], u64), ShadowError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(ShadowError::io(path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), [0; 32], 0)),
        Err(e) => return Err(ShadowError::io(path)(e)),
    }
    let damaged = |offset: usize, reason: &str| ShadowError::DamagedLog {
        path: path.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    let mut out = Vec::new();
    let mut prev = [0u8; 32];
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            if tolerate_tail && MAGIC.starts_with(&rest[..rest.len().min(4)]) {
                break;
            }
            return Err(damaged(at, "a record's header is cut short"));
        }
        if &rest[..4] != MAGIC {
            return Err(damaged(at, "no record starts here (bad magic)"));
        }
        let len = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default()) as usize;
        if len > MAX_PAYLOAD {
            return Err(damaged(at, "a record's length is out of range"));
        }
        let time = i64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&rest[16..48]);
        if rest.len() < HEADER + len {
            if tolerate_tail {
                break;
            }
            return Err(damaged(at, "a record is cut short"));
        }
        let payload = &rest[HEADER..HEADER + len];
        if chain(&prev, Timestamp(time), payload) != sum {
            return Err(damaged(at, "a record's checksum does not match"));
        }
        out.push(LogRecord {
            at: Timestamp(time),
            payload: payload.to_vec(),
            offset: at as u64,
        });
        prev = sum;
        at += HEADER + len;
    }
    Ok((out, prev, at as u64))
}
