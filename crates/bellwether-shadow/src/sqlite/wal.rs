//! Reading a SQLite write-ahead log as another process writes it, by the format documented
//! at <https://sqlite.org/fileformat2.html#walformat>.
//!
//! A WAL is a 32-byte header (magic, version, page size, checkpoint sequence, two salts, a
//! checksum) and frames of a 24-byte header (page number, database size in pages after the
//! commit for a commit frame and 0 otherwise, the salts, a cumulative checksum) plus one page.
//! A frame is valid when its salts are the header's and its checksum continues the chain;
//! the first invalid frame ends the log (the rest is a writer's unfinished frame or the
//! leftovers of a previous generation). Only frames up to the last valid commit frame count.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const HEADER: u64 = 32;
pub const FRAME_HEADER: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

/// The parsed WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt: [u32; 2],
    pub checksum: [u32; 2],
}

/// Where a reader stands in a WAL: the generation (salts), the byte after the last commit
/// read, and the running checksum there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub header: WalHeader,
    pub offset: u64,
    pub checksum: [u32; 2],
    /// Frames read (up to the last commit).
    pub frames: u32,
}

/// One commit found in the WAL: its pages (the last version of each, in order of first
/// appearance) and the database size after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub db_pages: u32,
    pub pages: Vec<(u32, Vec<u8>)>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The WAL checksum of `data` (a multiple of 8 bytes) continuing from `s`.
pub fn checksum(big_endian: bool, data: &[u8], s: [u32; 2]) -> [u32; 2] {
    let (mut s0, mut s1) = (s[0], s[1]);
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(&w[0..4]), be32(&w[4..8]))
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    [s0, s1]
}

/// Reads and checks the header; `None` when the WAL is missing, empty or not (yet) valid.
pub fn read_header(f: &File) -> io::Result<Option<WalHeader>> {
    let mut b = [0u8; HEADER as usize];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let magic = be32(&b[0..4]);
    let big_endian = match magic {
        MAGIC_BE => true,
        MAGIC_LE => false,
        _ => return Ok(None),
    };
    let page_size = be32(&b[8..12]);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Ok(None);
    }
    let sum = checksum(big_endian, &b[0..24], [0, 0]);
    let stored = [be32(&b[24..28]), be32(&b[28..32])];
    if sum != stored {
        return Ok(None);
    }
    Ok(Some(WalHeader {
        big_endian,
        page_size,
        checkpoint_seq: be32(&b[12..16]),
        salt: [be32(&b[16..20]), be32(&b[20..24])],
        checksum: stored,
    }))
}

/// How many of the generation `salt`'s first frames a checkpoint has copied into the
/// database file, as the wal-index (`-shm`) says (`nBackfill`, format:
/// <https://sqlite.org/walformat.html#the_wal_index_file_format>): 0 when the index is
/// missing, short, of another generation, or its two header copies differ (a writer was
/// changing it). A checkpointer sets `nBackfill` only after it wrote (and synced) those
/// pages into the database file, and never past a reader's snapshot, so under a read
/// transaction every frame up to the value read is in the file, and reading an older
/// (smaller) value only means laying more frames over the copy than needed.
pub fn backfilled(shm: &File, salt: [u32; 2]) -> u32 {
    let mut b = [0u8; 100];
    if shm.read_exact_at(&mut b, 0).is_err() {
        return 0;
    }
    // Native byte order: the wal-index is shared memory of this machine.
    let ne = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    // Two copies of the 48-byte header; isInit at byte 12; aSalt at byte 32 of each, the
    // WAL header's bytes as they are (big-endian), the rest in native order.
    if b[0..48] != b[48..96] || b[12] != 1 || [be32(&b[32..36]), be32(&b[36..40])] != salt {
        return 0;
    }
    let mx_frame = ne(16);
    ne(96).min(mx_frame)
}

impl Cursor {
    /// A cursor at the start of the generation `header` begins.
    pub fn start(header: WalHeader) -> Cursor {
        Cursor {
            header,
            offset: HEADER,
            checksum: header.checksum,
            frames: 0,
        }
    }

    /// A cursor that has seen no generation yet: the first header found starts one.
    pub fn empty() -> Cursor {
        let header = WalHeader {
            big_endian: false,
            page_size: 0,
            checkpoint_seq: 0,
            salt: [0, 0],
            checksum: [0, 0],
        };
        Cursor {
            header,
            offset: HEADER,
            checksum: [0, 0],
            frames: 0,
        }
    }

    /// Reads the commits after the cursor, up to `limit` commits (all when `None`) and up to
    /// byte `max_offset` of the file, and moves the cursor past them. Stops at the first
    /// invalid frame.
    pub fn read_commits(
        &mut self,
        f: &File,
        limit: Option<usize>,
        max_offset: Option<u64>,
    ) -> io::Result<Vec<Commit>> {
        self.read_commits_after(f, limit, max_offset, 0)
    }

    /// [`Cursor::read_commits`], leaving out of the commits' pages every page whose last
    /// version in the commits read is in one of the generation's first `backfilled` frames
    /// (already checkpointed into the database file; every frame is still read and checked).
    pub fn read_commits_after(
        &mut self,
        f: &File,
        limit: Option<usize>,
        max_offset: Option<u64>,
        backfilled: u32,
    ) -> io::Result<Vec<Commit>> {
        let len = f.metadata()?.len().min(max_offset.unwrap_or(u64::MAX));
        let ps = u64::from(self.header.page_size);
        let frame_len = FRAME_HEADER + ps;
        let mut out = Vec::new();
        let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut at = self.offset;
        let mut sum = self.checksum;
        let mut frames = 0u32;
        let mut buf = vec![0u8; frame_len as usize];
        while at + frame_len <= len && limit.is_none_or(|l| out.len() < l) {
            match f.read_exact_at(&mut buf, at) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let pgno = be32(&buf[0..4]);
            let db_pages = be32(&buf[4..8]);
            let salt = [be32(&buf[8..12]), be32(&buf[12..16])];
            if salt != self.header.salt || pgno == 0 {
                break;
            }
            let s = checksum(self.header.big_endian, &buf[0..8], sum);
            let s = checksum(self.header.big_endian, &buf[FRAME_HEADER as usize..], s);
            if s != [be32(&buf[16..20]), be32(&buf[20..24])] {
                break;
            }
            sum = s;
            at += frame_len;
            frames += 1;
            // This frame's number in the generation (1-based). Frames come in order, so a
            // backfilled frame's page has no kept version before it.
            if self.frames + frames > backfilled {
                let page = buf[FRAME_HEADER as usize..].to_vec();
                match pending.iter_mut().find(|(p, _)| *p == pgno) {
                    Some(slot) => slot.1 = page,
                    None => pending.push((pgno, page)),
                }
            }
            if db_pages != 0 {
                out.push(Commit {
                    db_pages,
                    pages: std::mem::take(&mut pending),
                });
                self.offset = at;
                self.checksum = sum;
                self.frames += frames;
                frames = 0;
            }
        }
        Ok(out)
    }
}

/// Encodes a commit as a commit-log payload: page size, database pages, page count, then
/// each page number and page.
pub fn encode(page_size: u32, c: &Commit) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + c.pages.len() * (4 + page_size as usize));
    out.extend_from_slice(&page_size.to_le_bytes());
    out.extend_from_slice(&c.db_pages.to_le_bytes());
    out.extend_from_slice(&(c.pages.len() as u32).to_le_bytes());
    for (pgno, page) in &c.pages {
        out.extend_from_slice(&pgno.to_le_bytes());
        out.extend_from_slice(page);
    }
    out
}

/// Decodes [`encode`]'s payload: the page size and the commit.
pub fn decode(b: &[u8]) -> Result<(u32, Commit), String> {
    let word = |at: usize| -> Result<u32, String> {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| "the record is cut short".to_string())
    };
    let page_size = word(0)?;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not a SQLite page size"));
    }
    let db_pages = word(4)?;
    let n = word(8)? as usize;
    let ps = page_size as usize;
    if b.len() != 12 + n * (4 + ps) {
        return Err(format!(
            "{} bytes do not hold {n} pages of {ps} bytes",
            b.len()
        ));
    }
    let mut pages = Vec::with_capacity(n);
    for i in 0..n {
        let at = 12 + i * (4 + ps);
        let pgno = word(at)?;
        if pgno == 0 {
            return Err("page number 0".into());
        }
        pages.push((pgno, b[at + 4..at + 4 + ps].to_vec()));
    }
    Ok((page_size, Commit { db_pages, pages }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn payload_round_trips(db_pages in 1u32..1000, pages in proptest::collection::vec((1u32..1000, any::<u8>()), 0..8)) {
            let c = Commit { db_pages, pages: pages.into_iter().map(|(p, b)| (p, vec![b; 512])).collect() };
            let (ps, back) = decode(&encode(512, &c)).unwrap();
            prop_assert_eq!(ps, 512);
            prop_assert_eq!(back, c);
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&b);
        }
    }
}
