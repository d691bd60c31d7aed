//! The full-page images in a piece of PostgreSQL WAL: which relation pages they copy.
//!
//! After every checkpoint the first change to a page writes the whole page into the WAL (a
//! *full-page image*), so that a torn page can be repaired; under scattered churn these are
//! nearly all of the WAL (97 % of it for 1 % of a pgbench table's rows updated after a
//! checkpoint). Such an image is the page as the base backup holds it plus a few changed
//! tuples, so a WAL chunk is stored as a zstd patch against the base backup's copies of the
//! pages its images copy ([`crate::delta`], format 4): an image then costs its changes.
//!
//! This module only reads: it walks the records that begin in a chunk (a page header's
//! `xlp_rem_len` skips a record continued from the chunk before) and lists the block
//! references that carry an uncompressed image. What it finds decides nothing but what a
//! patch is made against; the patch rebuilds the chunk's exact bytes whatever it finds, and
//! the rebuilt chunk is checked against its name. So damaged or unexpected WAL only makes a
//! worse patch, never a wrong one, and parsing stops at the first thing it does not expect.
//!
//! The layouts read (PostgreSQL 10 to 17, `access/xlogrecord.h`, `access/xlog_internal.h`):
//! pages of [`XLOG_BLCKSZ`] bytes, each opening with a 24-byte header (40 bytes where
//! `xlp_info` has `XLP_LONG_HEADER`, the first page of a segment); records 8-byte aligned, a
//! 24-byte `XLogRecord` (`xl_tot_len` first), then block headers (`id`, `fork_flags`,
//! `data_length`; an image header where `fork_flags` has `BKPBLOCK_HAS_IMAGE`; a
//! `RelFileNode` unless `BKPBLOCK_SAME_REL`; the block number), then the data in the same
//! order: each block's image and data, then the record's main data.

/// The size of a WAL page (PostgreSQL's default `XLOG_BLCKSZ`; a cluster built with another
/// is read as having no images).
pub(crate) const XLOG_BLCKSZ: usize = 8192;
/// The size of a relation page (`BLCKSZ`).
pub(crate) const BLCKSZ: u64 = 8192;
/// Relation segments are 1 GiB: `RELSEG_SIZE` blocks.
const RELSEG_BLOCKS: u64 = 131_072;

const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;
const RECORD_HEADER: usize = 24;
const MAX_BLOCK_ID: u8 = 32;
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const HAS_IMAGE: u8 = 0x10;
const SAME_REL: u8 = 0x80;
const FORK_MASK: u8 = 0x0F;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// A relation page a full-page image copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PageRef {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
    pub block: u32,
}

impl PageRef {
    /// The page's file in a data directory (relative, as a base backup's entries name it) and
    /// its offset there; `None` for a tablespace outside the data directory or an unknown fork.
    pub(crate) fn file(&self) -> Option<(String, u64)> {
        let fork = match self.fork {
            0 => "",
            1 => "_fsm",
            2 => "_vm",
            3 => "_init",
            _ => return None,
        };
        let seg = u64::from(self.block) / RELSEG_BLOCKS;
        let at = (u64::from(self.block) % RELSEG_BLOCKS) * BLCKSZ;
        let name = match seg {
            0 => format!("{}{fork}", self.rel),
            n => format!("{}{fork}.{n}", self.rel),
        };
        let path = match self.spc {
            1663 => format!("base/{}/{name}", self.db),
            1664 => format!("global/{name}"),
            _ => return None,
        };
        Some((path, at))
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// The pages whose uncompressed full-page images begin in `chunk`, WAL starting at LSN
/// `lsn` (a multiple of [`XLOG_BLCKSZ`]), in the order they appear, each once;
/// `server_version_num` says how an image's flags are laid out (they changed in 15).
pub(crate) fn images(chunk: &[u8], lsn: u64, server_version_num: u32) -> Vec<PageRef> {
    let Some(stream) = Stream::read(chunk, lsn) else {
        return Vec::new();
    };
    let compressed_mask: u8 = if server_version_num >= 150_000 {
        0x04 | 0x08 | 0x10
    } else {
        0x02
    };
    let mut out: Vec<PageRef> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut pos = 0;
    let b = &stream.bytes;
    while pos + RECORD_HEADER <= b.len() {
        let Some(tot) = u32_at(b, pos).map(|t| t as usize) else {
            break;
        };
        if tot < RECORD_HEADER {
            break; // zeros: the end of what was written, or a segment's switch
        }
        let end = pos + tot;
        let mut at = pos + RECORD_HEADER;
        let mut remaining = tot - RECORD_HEADER;
        let mut data_total = 0usize;
        // (page, image length) of each block with an image, data order kept beside.
        let mut blocks: Vec<(Option<PageRef>, usize, usize)> = Vec::new();
        let mut last_rel: Option<(u32, u32, u32)> = None;
        let mut ok = true;
        while remaining > data_total {
            let Some(&id) = b.get(at) else {
                ok = false;
                break;
            };
            match id {
                BLOCK_ID_DATA_SHORT => {
                    let Some(&n) = b.get(at + 1) else {
                        ok = false;
                        break;
                    };
                    at += 2;
                    let _ = n; // the main data, after the blocks'
                    break;
                }
                BLOCK_ID_DATA_LONG => {
                    let Some(n) = u32_at(b, at + 1) else {
                        ok = false;
                        break;
                    };
                    at += 5;
                    let _ = n;
                    break;
                }
                BLOCK_ID_ORIGIN => {
                    at += 3;
                    remaining = remaining.saturating_sub(3);
                }
                BLOCK_ID_TOPLEVEL_XID => {
                    at += 5;
                    remaining = remaining.saturating_sub(5);
                }
                id if id <= MAX_BLOCK_ID => {
                    let (Some(&flags), Some(data_len)) = (b.get(at + 1), u16_at(b, at + 2)) else {
                        ok = false;
                        break;
                    };
                    let mut h = at + 4;
                    let mut image_len = 0usize;
                    let mut image_ok = false;
                    if flags & HAS_IMAGE != 0 {
                        let (Some(len), Some(&info)) = (u16_at(b, h), b.get(h + 4)) else {
                            ok = false;
                            break;
                        };
                        image_len = usize::from(len);
                        h += 5;
                        let compressed = info & compressed_mask != 0;
                        if compressed && info & BKPIMAGE_HAS_HOLE != 0 {
                            h += 2;
                        }
                        image_ok = !compressed && image_len > 0 && image_len <= BLCKSZ as usize;
                    }
                    let rel = if flags & SAME_REL != 0 {
                        last_rel
                    } else {
                        let r = (u32_at(b, h), u32_at(b, h + 4), u32_at(b, h + 8));
                        h += 12;
                        match r {
                            (Some(s), Some(d), Some(r)) => Some((s, d, r)),
                            _ => None,
                        }
                    };
                    let Some(rel) = rel else {
                        ok = false;
                        break;
                    };
                    last_rel = Some(rel);
                    let Some(block) = u32_at(b, h) else {
                        ok = false;
                        break;
                    };
                    h += 4;
                    remaining = remaining.saturating_sub(h - at);
                    at = h;
                    data_total += image_len + usize::from(data_len);
                    let page = image_ok.then_some(PageRef {
                        spc: rel.0,
                        db: rel.1,
                        rel: rel.2,
                        fork: flags & FORK_MASK,
                        block,
                    });
                    blocks.push((page, image_len, usize::from(data_len)));
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok || at > end {
            break;
        }
        // The images begin where the headers end, each block's image then its data.
        let mut data = at;
        for (page, image_len, data_len) in blocks {
            if let Some(p) = page {
                if data < b.len() && seen.insert(p) {
                    out.push(p);
                }
            }
            data += image_len + data_len;
        }
        pos = maxalign(end);
    }
    out
}

/// The WAL of a chunk without its page headers, from the first record that begins in it.
struct Stream {
    bytes: Vec<u8>,
}

impl Stream {
    fn read(chunk: &[u8], lsn: u64) -> Option<Stream> {
        if !lsn.is_multiple_of(XLOG_BLCKSZ as u64) {
            return None;
        }
        let mut bytes = Vec::with_capacity(chunk.len());
        // Bytes of a record continued from before the chunk still to skip.
        let mut skip: Option<usize> = None;
        for (i, page) in chunk.chunks(XLOG_BLCKSZ).enumerate() {
            if page.len() < LONG_HEADER {
                break;
            }
            let info = u16_at(page, 2)?;
            let addr = u64_at(page, 8)?;
            if addr != lsn + (i * XLOG_BLCKSZ) as u64 {
                break; // not written yet (zeros), or another segment's leftovers
            }
            let header = if info & XLP_LONG_HEADER != 0 {
                LONG_HEADER
            } else {
                SHORT_HEADER
            };
            let data = &page[header..];
            match skip {
                None => {
                    let rem = u32_at(page, 16)? as usize;
                    // The continued record's bytes, then padding to the next record.
                    if rem >= data.len() {
                        skip = Some(rem - data.len());
                        continue;
                    }
                    bytes.extend_from_slice(&data[maxalign(rem).min(data.len())..]);
                    skip = Some(0);
                }
                Some(0) => bytes.extend_from_slice(data),
                Some(left) => {
                    if left >= data.len() {
                        skip = Some(left - data.len());
                        continue;
                    }
                    bytes.extend_from_slice(&data[maxalign(left).min(data.len())..]);
                    skip = Some(0);
                }
            }
        }
        Some(Stream { bytes })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with the given blocks (page, image length, data length) and main data.
    pub(crate) fn record(blocks: &[(PageRef, u16, u16)], main: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        let mut data = Vec::new();
        let mut last = None;
        for (i, (p, image, dlen)) in blocks.iter().enumerate() {
            let same = last == Some((p.spc, p.db, p.rel));
            let mut flags = p.fork;
            if *image > 0 {
                flags |= HAS_IMAGE;
            }
            if *dlen > 0 {
                flags |= 0x20;
            }
            if same {
                flags |= SAME_REL;
            }
            h.push(i as u8);
            h.push(flags);
            h.extend_from_slice(&dlen.to_le_bytes());
            if *image > 0 {
                h.extend_from_slice(&image.to_le_bytes());
                h.extend_from_slice(&0u16.to_le_bytes());
                h.push(if *image < 8192 { BKPIMAGE_HAS_HOLE } else { 0 });
            }
            if !same {
                for v in [p.spc, p.db, p.rel] {
                    h.extend_from_slice(&v.to_le_bytes());
                }
            }
            h.extend_from_slice(&p.block.to_le_bytes());
            last = Some((p.spc, p.db, p.rel));
            data.extend(std::iter::repeat_n(0xAB, usize::from(*image)));
            data.extend(std::iter::repeat_n(0xCD, usize::from(*dlen)));
        }
        h.push(BLOCK_ID_DATA_SHORT);
        h.push(main.len() as u8);
        data.extend_from_slice(main);
        let tot = RECORD_HEADER + h.len() + data.len();
        let mut r = Vec::with_capacity(tot);
        r.extend_from_slice(&(tot as u32).to_le_bytes());
        r.extend_from_slice(&[0u8; 20]);
        r.extend(h);
        r.extend(data);
        r
    }

    /// A record with a full image of each of `images` (whole pages, no hole) and no data.
    pub(crate) fn record_images(images: &[(PageRef, &[u8])]) -> Vec<u8> {
        let blocks: Vec<(PageRef, u16, u16)> = images
            .iter()
            .map(|(p, b)| (*p, b.len() as u16, 0))
            .collect();
        let mut r = record(&blocks, b"");
        // The images are the record's data, one after the other, last but for the main
        // data's (none here).
        let total: usize = images.iter().map(|(_, b)| b.len()).sum();
        let mut at = r.len() - total;
        for (_, b) in images {
            r[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        r
    }

    /// WAL pages from `lsn` holding `records` one after the other (8-byte aligned), split
    /// over pages with headers as PostgreSQL writes them.
    pub(crate) fn wal(lsn: u64, records: &[Vec<u8>], pages: usize, rem_first: u32) -> Vec<u8> {
        let mut stream = Vec::new();
        for r in records {
            stream.extend_from_slice(r);
            stream.resize(maxalign(stream.len()), 0);
        }
        let mut out = Vec::new();
        let mut at = 0;
        for i in 0..pages {
            let addr = lsn + (i * XLOG_BLCKSZ) as u64;
            let long = addr.is_multiple_of(16 << 20);
            let mut page = vec![0u8; XLOG_BLCKSZ];
            page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            let info: u16 = if long { XLP_LONG_HEADER } else { 0 };
            page[2..4].copy_from_slice(&info.to_le_bytes());
            page[8..16].copy_from_slice(&addr.to_le_bytes());
            let header = if long { LONG_HEADER } else { SHORT_HEADER };
            let rem = if i == 0 { rem_first } else { 0 };
            page[16..20].copy_from_slice(&rem.to_le_bytes());
            let mut from = header;
            if i == 0 {
                from += maxalign(rem_first as usize);
            }
            let n = (XLOG_BLCKSZ - from).min(stream.len().saturating_sub(at));
            page[from..from + n].copy_from_slice(&stream[at..at + n]);
            at += n;
            out.extend(page);
        }
        out
    }

    pub(crate) fn page(rel: u32, block: u32) -> PageRef {
        PageRef {
            spc: 1663,
            db: 5,
            rel,
            fork: 0,
            block,
        }
    }

    #[test]
    fn images_are_found_across_pages_in_order_once() {
        let records = vec![
            record(&[(page(16384, 7), 8192, 0)], b"abc"),
            record(&[(page(16384, 9), 0, 40)], b"x"),
            record(
                &[(page(16390, 1), 6000, 12), (page(16390, 2), 7000, 0)],
                b"main",
            ),
            record(&[(page(16384, 7), 8192, 0)], b""),
        ];
        let w = wal(16 << 20, &records, 8, 0);
        assert_eq!(
            images(&w, 16 << 20, 150_000),
            vec![page(16384, 7), page(16390, 1), page(16390, 2)]
        );
    }

    #[test]
    fn a_record_continued_from_before_the_chunk_is_skipped() {
        // An earlier record's last 9000 bytes fill the chunk's first page (rem 9000) and
        // 832 bytes of its second (rem 832); the record after it begins there.
        let lsn: u64 = (16 << 20) + 8192;
        let mut w = vec![0xEEu8; XLOG_BLCKSZ];
        w[0..4].fill(0);
        w[8..16].copy_from_slice(&lsn.to_le_bytes());
        w[16..20].copy_from_slice(&9000u32.to_le_bytes());
        let rem2 = (9000 - (XLOG_BLCKSZ - SHORT_HEADER)) as u32;
        assert_eq!(rem2, 832);
        let mut stream = vec![0xEEu8; 832];
        stream.extend(record(&[(page(1, 3), 8192, 0)], b""));
        let rest = wal(lsn + 8192, &[stream], 3, 0);
        w.extend_from_slice(&rest);
        w[XLOG_BLCKSZ + 16..XLOG_BLCKSZ + 20].copy_from_slice(&rem2.to_le_bytes());
        assert_eq!(images(&w, lsn, 150_000), vec![page(1, 3)]);
    }

    #[test]
    fn compressed_images_and_other_versions_flags() {
        let mut r = record(&[(page(1, 3), 3000, 0)], b"");
        // bimg_info: compressed with lz4 (15+) is 0x08; in 14 0x02 means compressed.
        let info_at = RECORD_HEADER + 4 + 4;
        r[info_at] = 0x08;
        let w = wal(16 << 20, &[r.clone()], 2, 0);
        assert!(images(&w, 16 << 20, 160_000).is_empty());
        assert_eq!(images(&w, 16 << 20, 140_000), vec![page(1, 3)]);
        r[info_at] = 0x02;
        let w = wal(16 << 20, &[r], 2, 0);
        assert!(images(&w, 16 << 20, 140_000).is_empty());
    }

    #[test]
    fn pages_map_to_files() {
        assert_eq!(
            page(16384, 3).file(),
            Some(("base/5/16384".into(), 3 * 8192))
        );
        let p = PageRef {
            spc: 1664,
            db: 0,
            rel: 1262,
            fork: 1,
            block: 131_073,
        };
        assert_eq!(p.file(), Some(("global/1262_fsm.1".into(), 8192)));
        let p = PageRef { spc: 16500, ..p };
        assert_eq!(p.file(), None);
    }

    #[test]
    fn unwritten_or_foreign_pages_end_the_walk() {
        assert!(images(&vec![0u8; 1 << 20], 0, 150_000).is_empty());
        let w = wal(16 << 20, &[record(&[(page(1, 3), 8192, 0)], b"")], 2, 0);
        // Read as if it were at another address: its page addresses do not match.
        assert!(images(&w, 32 << 20, 150_000).is_empty());
        assert!(images(&w[..30], 16 << 20, 150_000).is_empty());
        // Cut inside the record's headers: no image is said to begin.
        assert!(images(&w[..60], 16 << 20, 150_000).is_empty());
        assert!(images(&w, (16 << 20) + 1, 150_000).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40_000), at in 0usize..4) {
            let _ = images(&b, (at * XLOG_BLCKSZ) as u64, 150_000);
        }

        #[test]
        fn damaged_wal_is_read_without_panic(flips in proptest::collection::vec((0usize..16_384, proptest::prelude::any::<u8>()), 1..40)) {
            let records: Vec<Vec<u8>> = (0..6).map(|i| record(&[(page(16384, i), 3000 + i as u16 * 500, 20)], b"m")).collect();
            let mut w = wal(16 << 20, &records, 4, 0);
            for (at, v) in flips {
                if at < w.len() {
                    w[at] ^= v;
                }
            }
            let _ = images(&w, 16 << 20, 150_000);
        }
    }
}
