//! WAL positions (`X/Y`), segment file names and the timestamps `recovery_target_time` reads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A WAL position (an LSN), shown as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y` (hexadecimal halves).
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return None;
        }
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        Some(Lsn((hi << 32) | lo))
    }

    /// The segment number holding this position (`wal_segment_size` bytes a segment).
    pub fn segment(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lsn::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an LSN: {s:?}")))
    }
}

/// A WAL segment file's name: timeline, then the segment number split in two 8-digit halves
/// (`000000010000000000000003`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: u32,
    pub segno: u64,
}

impl SegmentName {
    /// Parses a 24-hex-digit segment name (no suffix).
    pub fn parse(name: &str, seg_size: u64) -> Option<SegmentName> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = 0x1_0000_0000 / seg_size;
        Some(SegmentName {
            timeline,
            segno: log * per_log + seg,
        })
    }

    pub fn file_name(&self, seg_size: u64) -> String {
        let per_log = 0x1_0000_0000 / seg_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_log,
            self.segno % per_log
        )
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00` for microseconds since the Unix epoch (UTC), the form
/// `recovery_target_time` accepts.
pub fn pg_timestamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{frac:06}+00",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_and_orders() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/3000060").unwrap() < Lsn::parse("1/0").unwrap());
        assert_eq!(Lsn::parse("nonsense"), None);
        assert_eq!(Lsn::parse("/1"), None);
    }

    #[test]
    fn segment_names_match_postgres() {
        let seg = 16 * 1024 * 1024;
        // 0/3000060 lies in segment 3 of timeline 1.
        let l = Lsn::parse("0/3000060").unwrap();
        let s = SegmentName {
            timeline: 1,
            segno: l.segment(seg),
        };
        assert_eq!(s.file_name(seg), "000000010000000000000003");
        // 1/5000000 is segment 0x100 + 5 with 256 segments a log file.
        let s = SegmentName::parse("000000020000000100000005", seg).unwrap();
        assert_eq!((s.timeline, s.segno), (2, 256 + 5));
        assert_eq!(s.file_name(seg), "000000020000000100000005");
        assert_eq!(SegmentName::parse("00000001000000000000000G", seg), None);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(pg_timestamp(0), "1970-01-01 00:00:00.000000+00");
        // 2026-12-05T17:54:49.123456Z (checked with `date -u -d @1796493289`).
        assert_eq!(
            pg_timestamp(1_796_493_289_123_456),
            "2026-12-05 17:54:49.123456+00"
        );
        assert_eq!(
            pg_timestamp(951_782_400_000_000),
            "2000-02-29 00:00:00.000000+00"
        );
    }
}
