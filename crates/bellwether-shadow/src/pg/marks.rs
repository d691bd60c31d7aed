//! A transactional point's mark, written into the primary's WAL, and read back from the
//! shadow's copy of it.
//!
//! A point of a transactional shadow is marked with a transactional logical message
//! (`pg_logical_emit_message(true, 'bellwether.point', JSON)`): the point's number, when it
//! was taken, why, and the base it is on. The message's end is the point's LSN, and its
//! transaction's commit (the record that makes the stream flush through it) follows. The
//! shadow waits until `pg_receivewal --synchronous` has flushed that commit to `pg/wal`, so
//! once the point is returned its mark is durable there, and the manifest need not be: the
//! next sync makes it durable ([`crate::point::PointStore::commit_point_deferred`]), and a
//! start after the machine stopped before that rebuilds any manifest it lost from the marks
//! ([`super::shadow::recover_points`]).
//!
//! Reading: [`find`] walks the records of the segments in `pg/wal` from a page's first
//! record boundary (its header's `xlp_rem_len` skips a record continued from the page
//! before), each record's `xl_prev` checked against the one before and every record it
//! keeps checked by its CRC-32C, so it stops at the end of what the stream wrote (zeros) or
//! at anything damaged. Layouts (PostgreSQL 10 to 17): `access/xlog_internal.h` (page
//! headers), `access/xlogrecord.h` (`XLogRecord`, the main-data block ids),
//! `replication/message.h` (`xl_logical_message`), `access/xact.h` (`xl_xact_commit`).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fpi::{u32_at, u64_at, XLOG_BLCKSZ};
use super::lsn::{Lsn, SegmentName};
use crate::point::{Reason, Timestamp};

/// The prefix of a point's logical message.
pub(crate) const PREFIX: &str = "bellwether.point";

/// What a point's message says (its content, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Mark {
    /// The shadow's name (its slot's): several shadows may follow one primary.
    pub shadow: String,
    /// The point's number.
    pub seq: u64,
    pub taken_at: Timestamp,
    pub reason: Reason,
    /// The base point the point is on, and where that base's WAL starts.
    pub base_seq: u64,
    pub base_start: Lsn,
}

/// A mark found in the WAL with what its record and its commit say.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub mark: Mark,
    /// The end of the message's record: the point's LSN.
    pub lsn: Lsn,
    /// The end of its transaction's commit record: the WAL a restore to the point reads.
    pub through: Lsn,
    /// The commit's time.
    pub committed_at: Timestamp,
}

const SHORT_HEADER: u64 = 24;
const LONG_HEADER: u64 = 40;
const XLP_LONG_HEADER: u16 = 0x0002;
const RECORD_HEADER: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_LOGICALMSG_ID: u8 = 21;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_LOGICAL_MESSAGE: u8 = 0x00;
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
/// A record longer than this is stepped over unread (a point's message is a few hundred
/// bytes; a commit's main data a few dozen).
const READ_MAX: u32 = 1 << 20;
/// PostgreSQL writes no record longer than this (`XLogRecordMaxSize`, 1020 MiB).
const RECORD_MAX: u32 = 1 << 30;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

fn maxalign(n: u64) -> u64 {
    (n + 7) & !7
}

/// The WAL of one timeline in a directory of segments (`NAME` or `NAME.partial`), read by
/// LSN.
struct Segments {
    dir: PathBuf,
    timeline: u32,
    seg: u64,
    open: Option<(u64, std::fs::File)>,
}

impl Segments {
    fn file(&mut self, segno: u64) -> Option<&std::fs::File> {
        if self.open.as_ref().map(|o| o.0) != Some(segno) {
            let name = SegmentName {
                timeline: self.timeline,
                segno,
            }
            .file_name(self.seg);
            let complete = self.dir.join(&name);
            let partial = self.dir.join(format!("{name}.partial"));
            let (f, _) = super::base::open_segment(&complete, &partial).ok()??;
            self.open = Some((segno, f));
        }
        self.open.as_ref().map(|o| &o.1)
    }

    /// Bytes `lsn..lsn + out.len()`, all in one page.
    fn read(&mut self, lsn: u64, out: &mut [u8]) -> bool {
        let seg = self.seg;
        let Some(f) = self.file(lsn / seg) else {
            return false;
        };
        f.read_exact_at(out, lsn % seg).is_ok()
    }

    /// The header length of the page at `page` if it is a page this stream wrote there.
    fn page_header(&mut self, page: u64) -> Option<(u64, u32)> {
        let mut h = [0u8; SHORT_HEADER as usize];
        if !self.read(page, &mut h) {
            return None;
        }
        let info = u16::from_le_bytes([h[2], h[3]]);
        if u64_at(&h, 8)? != page || u32_at(&h, 4)? != self.timeline {
            return None;
        }
        let len = if info & XLP_LONG_HEADER != 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        Some((len, u32_at(&h, 16)?))
    }

    /// The position `n` bytes of record after `at` (page headers skipped), and the bytes
    /// when `read`.
    fn gather(&mut self, mut at: u64, n: u64, read: bool) -> Option<(u64, Vec<u8>)> {
        let page = XLOG_BLCKSZ as u64;
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 {
            if at.is_multiple_of(page) {
                at += self.page_header(at)?.0;
            }
            let k = (page - at % page).min(left);
            if read {
                let from = out.len();
                out.resize(from + k as usize, 0);
                if !self.read(at, &mut out[from..]) {
                    return None;
                }
            }
            at += k;
            left -= k;
        }
        Some((at, out))
    }

    /// The first record that begins on the page at `page` (or a later page, where a
    /// record continued from before fills it).
    fn first_record(&mut self, mut page: u64) -> Option<u64> {
        let size = XLOG_BLCKSZ as u64;
        loop {
            let (h, rem) = self.page_header(page)?;
            let rem = u64::from(rem);
            if rem < size - h {
                return Some(page + h + maxalign(rem));
            }
            page += size;
        }
    }
}

/// The main data of a record with no block references, if it has any.
fn main_data(rec: &[u8]) -> Option<&[u8]> {
    let mut at = RECORD_HEADER;
    let len = loop {
        match *rec.get(at)? {
            BLOCK_ID_DATA_SHORT => {
                let n = usize::from(*rec.get(at + 1)?);
                at += 2;
                break n;
            }
            BLOCK_ID_DATA_LONG => {
                let n = u32_at(rec, at + 1)? as usize;
                at += 5;
                break n;
            }
            BLOCK_ID_ORIGIN => at += 3,
            BLOCK_ID_TOPLEVEL_XID => at += 5,
            _ => return None,
        }
    };
    rec.get(at..at.checked_add(len)?)
}

/// Whether a record's CRC-32C (over its data, then its header up to the CRC) is right.
fn crc_ok(rec: &[u8]) -> bool {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let Some(want) = u32_at(rec, 20) else {
        return false;
    };
    let mut d = CRC.digest();
    d.update(&rec[RECORD_HEADER..]);
    d.update(&rec[..20]);
    d.finalize() == want
}

/// The marks of shadow `shadow` in the WAL of `timeline` in `dir` (segments of `seg`
/// bytes) whose records begin at or after `from`, each with its transaction's commit, in
/// WAL order. A mark whose commit is not there (its statement failed, or the WAL ends
/// first) is left out. Reading starts at the page of `from`, or at the first segment there
/// after it; it ends where the WAL does.
pub(crate) fn find(dir: &Path, timeline: u32, seg: u64, from: Lsn, shadow: &str) -> Vec<Found> {
    let mut w = Segments {
        dir: dir.to_owned(),
        timeline,
        seg,
        open: None,
    };
    let page = XLOG_BLCKSZ as u64;
    // Where to begin: the page of `from`, or the first page of a later segment.
    let mut segnos: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let n = n.strip_suffix(".partial").unwrap_or(&n).to_owned();
            SegmentName::parse(&n, seg).filter(|s| s.timeline == timeline)
        })
        .map(|s| s.segno)
        .filter(|s| *s >= from.segment(seg))
        .collect();
    segnos.sort_unstable();
    segnos.dedup();
    let start = segnos.iter().find_map(|s| {
        let at = if *s == from.segment(seg) {
            from.0 - from.0 % page
        } else {
            s * seg
        };
        w.first_record(at)
    });
    let Some(mut at) = start else {
        return Vec::new();
    };
    let mut prev: Option<u64> = None;
    let mut open: HashMap<u32, (Mark, Lsn)> = HashMap::new();
    let mut found = Vec::new();
    loop {
        if at.is_multiple_of(page) {
            // A record begins after the page's header (its end may be the page's start).
            let Some((h, _)) = w.page_header(at) else {
                break;
            };
            at += h;
        }
        let Some((_, header)) = w.gather(at, RECORD_HEADER as u64, true) else {
            break;
        };
        let tot_len = u32_at(&header, 0).unwrap_or(0);
        if (tot_len as usize) < RECORD_HEADER || tot_len > RECORD_MAX {
            break;
        }
        if let Some(p) = prev {
            if u64_at(&header, 8) != Some(p) {
                break;
            }
        }
        let xid = u32_at(&header, 4).unwrap_or(0);
        let (info, rmid) = (header[16], header[17]);
        let wanted = tot_len <= READ_MAX
            && ((rmid == RM_LOGICALMSG_ID && info & 0xF0 == XLOG_LOGICAL_MESSAGE)
                || (rmid == RM_XACT_ID
                    && info & XLOG_XACT_OPMASK == XLOG_XACT_COMMIT
                    && open.contains_key(&xid)));
        let Some((end, rec)) = w.gather(at, u64::from(tot_len), wanted) else {
            break;
        };
        let end = maxalign(end);
        if wanted {
            if !crc_ok(&rec) {
                break;
            }
            if rmid == RM_LOGICALMSG_ID {
                if let Some(mark) = message(&rec).filter(|m| m.shadow == shadow) {
                    open.insert(xid, (mark, Lsn(end)));
                }
            } else if let Some((mark, lsn)) = open.remove(&xid) {
                let time = main_data(&rec)
                    .and_then(|d| u64_at(d, 0))
                    .map(|t| t as i64 + PG_EPOCH_US);
                if let Some(t) = time {
                    found.push(Found {
                        mark,
                        lsn,
                        through: Lsn(end),
                        committed_at: Timestamp(t),
                    });
                }
            }
        }
        prev = Some(at);
        at = if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            // The rest of the segment is unused: the next record opens the next one.
            (at / seg + 1) * seg
        } else {
            end
        };
    }
    found.retain(|f| f.lsn >= from);
    found
}

/// A point's mark from a logical message's record, if it is one.
fn message(rec: &[u8]) -> Option<Mark> {
    let d = main_data(rec)?;
    let prefix_size = usize::try_from(u64_at(d, 8)?).ok()?;
    let size = usize::try_from(u64_at(d, 16)?).ok()?;
    let prefix = d.get(24..24usize.checked_add(prefix_size)?)?;
    if prefix.strip_suffix(&[0]) != Some(PREFIX.as_bytes()) {
        return None;
    }
    let body = d.get(24 + prefix_size..(24 + prefix_size).checked_add(size)?)?;
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    /// WAL as PostgreSQL lays it out: pages with headers, records 8-byte aligned and split
    /// across pages, each with its `xl_prev` and CRC.
    struct Wal {
        bytes: Vec<u8>,
        at: u64,
        prev: u64,
        base: u64,
    }

    impl Wal {
        fn new(base: u64) -> Wal {
            let mut w = Wal {
                bytes: Vec::new(),
                at: base,
                prev: 0,
                base,
            };
            w.page_if_needed(0);
            w
        }

        fn page_if_needed(&mut self, rem: u32) {
            let page = XLOG_BLCKSZ as u64;
            if !self.at.is_multiple_of(page) {
                return;
            }
            let long = self.at.is_multiple_of(SEG);
            let mut h = vec![0u8; if long { 40 } else { 24 }];
            h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            h[2..4].copy_from_slice(
                &(if long { XLP_LONG_HEADER } else { 0 } | u16::from(rem > 0)).to_le_bytes(),
            );
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&self.at.to_le_bytes());
            h[16..20].copy_from_slice(&rem.to_le_bytes());
            self.put(&h);
        }

        fn put(&mut self, b: &[u8]) {
            let off = (self.at - self.base) as usize;
            if self.bytes.len() < off + b.len() {
                self.bytes.resize(off + b.len(), 0);
            }
            self.bytes[off..off + b.len()].copy_from_slice(b);
            self.at += b.len() as u64;
        }

        /// Appends a record; returns its start and its aligned end.
        fn record(&mut self, rmid: u8, info: u8, xid: u32, main: &[u8]) -> (u64, u64) {
            let mut rec = vec![0u8; RECORD_HEADER];
            if main.len() < 256 {
                rec.extend_from_slice(&[BLOCK_ID_DATA_SHORT, main.len() as u8]);
            } else {
                rec.push(BLOCK_ID_DATA_LONG);
                rec.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            rec.extend_from_slice(main);
            let tot = rec.len() as u32;
            rec[0..4].copy_from_slice(&tot.to_le_bytes());
            rec[4..8].copy_from_slice(&xid.to_le_bytes());
            rec[8..16].copy_from_slice(&self.prev.to_le_bytes());
            rec[16] = info;
            rec[17] = rmid;
            const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
            let mut d = CRC.digest();
            d.update(&rec[RECORD_HEADER..]);
            d.update(&rec[..20]);
            let sum = d.finalize();
            rec[20..24].copy_from_slice(&sum.to_le_bytes());
            let start = self.at;
            let page = XLOG_BLCKSZ as u64;
            let mut left: &[u8] = &rec;
            while !left.is_empty() {
                self.page_if_needed(left.len() as u32 * u32::from(left.len() < rec.len()));
                let k = ((page - self.at % page) as usize).min(left.len());
                self.put(&left[..k]);
                left = &left[k..];
            }
            let end = maxalign(self.at);
            let pad = (end - self.at) as usize;
            self.put(&vec![0u8; pad]);
            self.prev = start;
            (start, end)
        }

        fn message(&mut self, xid: u32, prefix: &str, body: &[u8]) -> (u64, u64) {
            let mut d = vec![0u8; 24];
            d[0..4].copy_from_slice(&5u32.to_le_bytes());
            d[4] = 1;
            d[8..16].copy_from_slice(&(prefix.len() as u64 + 1).to_le_bytes());
            d[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
            d.extend_from_slice(prefix.as_bytes());
            d.push(0);
            d.extend_from_slice(body);
            self.record(RM_LOGICALMSG_ID, XLOG_LOGICAL_MESSAGE, xid, &d)
        }

        fn commit(&mut self, xid: u32, unix_us: i64) -> (u64, u64) {
            let mut d = (unix_us - PG_EPOCH_US).to_le_bytes().to_vec();
            d.extend_from_slice(&[0u8; 8]);
            self.record(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &d)
        }

        fn switch(&mut self) {
            self.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
            let next = (self.at / SEG + 1) * SEG;
            self.put(&vec![0u8; (next - self.at) as usize]);
            self.page_if_needed(0);
        }

        fn write(&self, dir: &Path, partial_last: bool) {
            let n = self.bytes.len().div_ceil(SEG as usize);
            for i in 0..n {
                let segno = self.base / SEG + i as u64;
                let mut b = self.bytes[i * SEG as usize..].to_vec();
                b.truncate(SEG as usize);
                b.resize(SEG as usize, 0);
                let name = SegmentName { timeline: 1, segno }.file_name(SEG);
                let name = if partial_last && i == n - 1 {
                    format!("{name}.partial")
                } else {
                    name
                };
                std::fs::write(dir.join(name), b).unwrap();
            }
        }
    }

    fn mark(shadow: &str, seq: u64) -> Mark {
        Mark {
            shadow: shadow.into(),
            seq,
            taken_at: Timestamp(1_796_572_800_000_000 + seq as i64),
            reason: Reason::OnDemand,
            base_seq: 1,
            base_start: Lsn(SEG),
        }
    }

    fn filler(w: &mut Wal, n: usize, len: usize) {
        for i in 0..n {
            w.record(10, 0, 900 + i as u32, &vec![7u8; len]);
        }
    }

    #[test]
    fn marks_are_found_with_their_commits_across_pages_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::new(SEG);
        // A record continued from before the first page: the walk begins after it.
        filler(&mut w, 3, 3000);
        let a = mark("bw_a", 2);
        let (_, a_end) = w.message(40, PREFIX, &serde_json::to_vec(&a).unwrap());
        filler(&mut w, 2, 100);
        let (_, a_through) = w.commit(40, 1_796_572_800_123_456);
        // Another shadow's mark and an unrelated message are passed over.
        let other = mark("bw_other", 9);
        w.message(41, PREFIX, &serde_json::to_vec(&other).unwrap());
        w.commit(41, 1);
        w.message(42, "somebody.else", b"{}");
        w.commit(42, 1);
        // A mark whose transaction never commits is left out.
        w.message(43, PREFIX, &serde_json::to_vec(&mark("bw_a", 3)).unwrap());
        // Records that fill pages, so the next mark straddles a page boundary.
        while (w.at % XLOG_BLCKSZ as u64) < XLOG_BLCKSZ as u64 - 80 {
            w.record(10, 0, 7, &[1u8; 16]);
        }
        let b = mark("bw_a", 3);
        let (b_start, b_end) = w.message(44, PREFIX, &serde_json::to_vec(&b).unwrap());
        assert_ne!(b_start / 8192, (b_end - 1) / 8192, "the mark spans pages");
        w.switch();
        filler(&mut w, 40, 2000);
        let (_, b_through) = w.commit(44, 1_796_572_900_000_000);
        w.write(dir.path(), true);

        let found = find(dir.path(), 1, SEG, Lsn(SEG), "bw_a");
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].mark, a);
        assert_eq!(found[0].lsn, Lsn(a_end));
        assert_eq!(found[0].through, Lsn(a_through));
        assert_eq!(found[0].committed_at, Timestamp(1_796_572_800_123_456));
        assert_eq!(found[1].mark, b);
        assert_eq!(found[1].lsn, Lsn(b_end));
        assert_eq!(found[1].through, Lsn(b_through));
        assert!(b_through > 2 * SEG, "the commit is in the next segment");
        // From a position after the first mark: only the second.
        let later = find(dir.path(), 1, SEG, Lsn(a_end + 8), "bw_a");
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].mark.seq, 3);
        // The first segment gone: the walk begins in the next one.
        let first = SegmentName {
            timeline: 1,
            segno: 1,
        }
        .file_name(SEG);
        std::fs::remove_file(dir.path().join(first)).unwrap();
        let rest = find(dir.path(), 1, SEG, Lsn(SEG), "bw_a");
        assert!(
            rest.is_empty(),
            "the second mark's message was in the removed segment: {rest:?}"
        );
        // Another timeline's WAL is not read.
        assert!(find(dir.path(), 2, SEG, Lsn(SEG), "bw_a").is_empty());
    }

    #[test]
    fn the_walk_stops_at_damage_and_at_the_end_of_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::new(SEG);
        let a = mark("bw_a", 2);
        w.message(40, PREFIX, &serde_json::to_vec(&a).unwrap());
        w.commit(40, 5);
        let (b_start, _) = w.message(41, PREFIX, &serde_json::to_vec(&mark("bw_a", 3)).unwrap());
        w.commit(41, 6);
        w.write(dir.path(), true);
        assert_eq!(find(dir.path(), 1, SEG, Lsn(SEG), "bw_a").len(), 2);
        // A flipped byte in the second mark: its CRC fails, and the walk ends before it.
        let name = SegmentName {
            timeline: 1,
            segno: 1,
        }
        .file_name(SEG);
        let path = dir.path().join(format!("{name}.partial"));
        let mut b = std::fs::read(&path).unwrap();
        b[(b_start - SEG) as usize + 40] ^= 0x20;
        std::fs::write(&path, &b).unwrap();
        let found = find(dir.path(), 1, SEG, Lsn(SEG), "bw_a");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].mark, a);
        // Nothing there at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(find(empty.path(), 1, SEG, Lsn(SEG), "bw_a").is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn damaged_wal_is_read_without_panic(flips in proptest::collection::vec((0usize..20_000, proptest::prelude::any::<u8>()), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut w = Wal::new(SEG);
            filler(&mut w, 2, 5000);
            w.message(40, PREFIX, &serde_json::to_vec(&mark("bw_a", 2)).unwrap());
            w.commit(40, 5);
            filler(&mut w, 2, 3000);
            for (at, v) in flips {
                if at < w.bytes.len() {
                    w.bytes[at] ^= v;
                }
            }
            w.write(dir.path(), true);
            let _ = find(dir.path(), 1, SEG, Lsn(SEG), "bw_a");
        }
    }
}
