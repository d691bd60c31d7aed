//! Content-defined chunking of one file with FastCDC (the 2020 algorithm of Xia et al., as the
//! `fastcdc` crate implements it), so an insertion or a deletion in the middle of a file moves
//! only the chunk boundaries next to it and every other chunk keeps its SHA-256 name: a
//! differential point stores only the chunks around the change.
//!
//! Sizes: minimum 16 KiB, average 64 KiB, maximum 256 KiB (casync's defaults, and the
//! min = avg/4, max = 4·avg spread the FastCDC paper measures with normalisation level 1).
//! Why 64 KiB on average: a point's index costs about 80 bytes of JSON per chunk, 0.12 % of
//! the data at 64 KiB (1.2 % at 8 KiB); a small edit re-stores one or two chunks, 64–128 KiB,
//! which against the 1 %/h churn goal (10 MiB per GiB per hour) is noise; and the objects stay
//! few enough (16 384 per GiB) that a directory of them stays quick to list and to collect.
//! Borg's and restic's 1–2 MiB averages cut the object count further but re-store a whole MiB
//! for a one-byte change, which is what a shadow taken every few minutes must avoid.

use std::io::{self, Read};

use fastcdc::v2020::{Error as CdcError, StreamCDC};
use sha2::{Digest, Sha256};

/// The chunk sizes in bytes; [`ChunkSizes::DEFAULT`] is what every shadow uses (a shadow that
/// changed them would stop deduplicating against its own earlier points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkSizes {
    pub const DEFAULT: ChunkSizes = ChunkSizes {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    };
}

/// One chunk as it was cut: its SHA-256 (hex, the object's name in the store) and its bytes.
#[derive(Debug)]
pub struct Chunk {
    pub sha256: String,
    pub data: Vec<u8>,
}

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Cuts `source` into content-defined chunks and hands each to `each`, in order; returns the
/// SHA-256 of the whole stream and its length. An empty stream has no chunk.
pub fn chunk_stream<R: Read>(
    source: R,
    sizes: ChunkSizes,
    mut each: impl FnMut(Chunk) -> io::Result<()>,
) -> io::Result<(String, u64)> {
    let mut whole = Sha256::new();
    let mut len = 0u64;
    for piece in StreamCDC::new(source, sizes.min, sizes.avg, sizes.max) {
        let piece = piece.map_err(|e| match e {
            CdcError::IoError(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        whole.update(&piece.data);
        len += piece.data.len() as u64;
        each(Chunk {
            sha256: sha256_hex(&piece.data),
            data: piece.data,
        })?;
    }
    Ok((hex::encode(whole.finalize()), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so the test needs no data file.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cut(data: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let (whole, len) = chunk_stream(data, ChunkSizes::DEFAULT, |c| {
            out.push((c.sha256, c.data.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(whole, sha256_hex(data));
        out
    }

    #[test]
    fn chunks_respect_the_sizes_and_cover_the_stream() {
        let data = noise(7, 4 << 20);
        let chunks = cut(&data);
        let total: usize = chunks.iter().map(|c| c.1).sum();
        assert_eq!(total, data.len());
        let s = ChunkSizes::DEFAULT;
        for (i, (_, len)) in chunks.iter().enumerate() {
            assert!(*len <= s.max as usize, "chunk {i} is {len} bytes");
            if i + 1 < chunks.len() {
                assert!(*len >= s.min as usize, "chunk {i} is {len} bytes");
            }
        }
        // 4 MiB at a 64 KiB average: FastCDC's normalised sizes keep the count near 64.
        assert!(
            (32..=128).contains(&chunks.len()),
            "{} chunks",
            chunks.len()
        );
    }

    #[test]
    fn an_insertion_in_the_middle_changes_only_the_chunks_around_it() {
        let data = noise(11, 4 << 20);
        let mut edited = data[..2 << 20].to_vec();
        edited.extend_from_slice(b"an insertion of a few bytes");
        edited.extend_from_slice(&data[2 << 20..]);
        let before: std::collections::HashSet<String> =
            cut(&data).into_iter().map(|c| c.0).collect();
        let after = cut(&edited);
        let new = after.iter().filter(|c| !before.contains(&c.0)).count();
        assert!(new >= 1, "the edit must show");
        assert!(new <= 3, "{new} of {} chunks changed", after.len());
    }

    #[test]
    fn an_empty_stream_has_no_chunk() {
        assert!(cut(b"").is_empty());
    }
}
