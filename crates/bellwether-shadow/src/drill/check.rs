//! The drill's verdict on a restored copy, from the writer's log alone: which transactions
//! were certainly committed before the point (their `C` line is older than the point's
//! window), which certainly began after it (their `B` line is newer than the window), and
//! whether every restored byte is a byte the writer wrote.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::writer::{dir_content, dir_op, slot_path, sqlite_payload, DIR_SLOTS};

/// One transaction in the writer's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tx {
    pub begun_ns: i64,
    pub committed_ns: Option<i64>,
}

/// The writer's log: transactions by number, and the error that ended it.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    pub txs: BTreeMap<u64, Tx>,
    pub ended_by: Option<String>,
}

impl WriterLog {
    /// Reads the log; a torn last line (the writer killed mid-write) is ignored.
    pub fn read(path: &Path) -> Result<WriterLog, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut log = WriterLog::default();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |j: usize| f.get(j).and_then(|s| s.parse::<i64>().ok());
            match (f.first().copied(), num(1), num(2)) {
                (Some("B"), Some(k), Some(t)) if k > 0 => {
                    log.txs.entry(k as u64).or_default().begun_ns = t;
                }
                (Some("C"), Some(k), Some(t)) if k > 0 => {
                    log.txs.entry(k as u64).or_default().committed_ns = Some(t);
                }
                (Some("E"), Some(_), _) => log.ended_by = f.get(2).map(|s| s.to_string()),
                _ if i + 1 == text.lines().count() => {}
                _ => return Err(format!("{}:{}: bad line {line:?}", path.display(), i + 1)),
            }
        }
        Ok(log)
    }

    /// Transactions committed before `t`.
    pub fn committed_before(&self, t: i64) -> impl Iterator<Item = u64> + '_ {
        self.txs
            .iter()
            .filter(move |(_, tx)| tx.committed_ns.is_some_and(|c| c < t))
            .map(|(k, _)| *k)
    }
}

/// The verdict on one restored copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Transactions committed before the point's window that the restore holds.
    pub committed_before_point: u64,
    /// Of them, missing from the restore (directory: slots older than their last commit).
    pub lost: u64,
    /// Transactions begun after the point's window that the restore holds.
    pub after_point: u64,
    /// Damage: bytes the writer never wrote, an integrity check that failed, a gap.
    pub corrupt: Vec<String>,
    /// What the restore holds: the last transaction (SQLite) or the slots present (directory).
    pub restored: u64,
}

/// Checks a restored SQLite database against the log and the point's window.
pub fn check_sqlite(db: &Path, log: &WriterLog, seed: u64, window: (i64, i64)) -> Verdict {
    let mut v = Verdict::default();
    let conn =
        match rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        {
            Ok(c) => c,
            Err(e) => {
                v.corrupt.push(format!("cannot open {}: {e}", db.display()));
                return v;
            }
        };
    let integrity: Result<String, _> = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0));
    match integrity {
        Ok(s) if s == "ok" => {}
        Ok(s) => v.corrupt.push(format!("integrity_check: {s}")),
        Err(e) => v.corrupt.push(format!("integrity_check: {e}")),
    }
    let rows: Result<Vec<(i64, Vec<u8>)>, _> = conn
        .prepare("SELECT id, payload FROM drill_tx ORDER BY id")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            v.corrupt.push(format!("reading drill_tx: {e}"));
            return v;
        }
    };
    let mut total = 0i64;
    for (i, (id, payload)) in rows.iter().enumerate() {
        if *id != i as i64 + 1 {
            v.corrupt
                .push(format!("transaction {} missing before {id}", i + 1));
            break;
        }
        if *payload != sqlite_payload(seed, *id as u64) {
            v.corrupt
                .push(format!("transaction {id}: payload is not what was written"));
        }
        total += payload.len() as i64;
    }
    let n = rows.len() as u64;
    v.restored = n;
    match conn.query_row("SELECT last_id, total_bytes FROM drill_state", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    }) {
        Ok((last, t)) if last == n as i64 && t == total => {}
        Ok((last, t)) => v.corrupt.push(format!(
            "drill_state says {last} transactions, {t} bytes; the rows say {n}, {total}: a transaction was applied in part"
        )),
        Err(e) => v.corrupt.push(format!("reading drill_state: {e}")),
    }
    for k in log.committed_before(window.0) {
        v.committed_before_point += 1;
        if k > n {
            v.lost += 1;
        }
    }
    for k in 1..=n {
        match log.txs.get(&k) {
            Some(tx) if tx.begun_ns > window.1 => v.after_point += 1,
            Some(_) => {}
            None => v
                .corrupt
                .push(format!("transaction {k} is not in the writer's log")),
        }
    }
    v
}

/// Checks a restored directory against the log and the point's window, slot by slot: each
/// slot must hold the version of a transaction that began before the window ended and is not
/// older than the slot's last transaction committed before the window began.
pub fn check_dir(root: &Path, log: &WriterLog, seed: u64, window: (i64, i64)) -> Verdict {
    let mut v = Verdict::default();
    let mut by_slot: BTreeMap<u64, Vec<(u64, bool, Tx)>> = BTreeMap::new();
    for (k, tx) in &log.txs {
        let (slot, write) = dir_op(seed, *k);
        by_slot.entry(slot).or_default().push((*k, write, *tx));
    }
    v.committed_before_point = log.committed_before(window.0).count() as u64;
    for slot in 0..DIR_SLOTS {
        let rel = slot_path(slot);
        let p = root.join(&rel);
        // The restored state: Some(k) for the version of transaction k, None when absent.
        let state: Option<u64> = match fs::read(&p) {
            Ok(bytes) => {
                let header = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
                let k = std::str::from_utf8(header)
                    .ok()
                    .and_then(|h| h.strip_prefix("bw-drill k="))
                    .and_then(|h| h.split(' ').next())
                    .and_then(|k| k.parse::<u64>().ok());
                match k {
                    Some(k) if dir_content(seed, k, slot) == bytes => {
                        v.restored += 1;
                        Some(k)
                    }
                    _ => {
                        v.corrupt
                            .push(format!("{rel}: bytes that no transaction wrote"));
                        continue;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                v.corrupt.push(format!("{rel}: {e}"));
                continue;
            }
        };
        let ops = by_slot.get(&slot).map(Vec::as_slice).unwrap_or_default();
        let last_committed = ops
            .iter()
            .filter(|(_, _, tx)| tx.committed_ns.is_some_and(|c| c < window.0))
            .map(|(k, _, _)| *k)
            .max();
        // Transactions the restored state may come from: not older than the last committed
        // one, begun before the window ended; "nothing yet" counts when none committed.
        let may = |k: u64, write: bool, tx: &Tx| {
            last_committed.is_none_or(|lc| k >= lc)
                && tx.begun_ns <= window.1
                && (if write {
                    state == Some(k)
                } else {
                    state.is_none()
                })
        };
        let ok = ops.iter().any(|(k, w, tx)| may(*k, *w, tx))
            || (state.is_none() && last_committed.is_none());
        if !ok {
            match state {
                Some(k) if log.txs.get(&k).is_some_and(|tx| tx.begun_ns > window.1) => {
                    v.after_point += 1
                }
                Some(k) if !log.txs.contains_key(&k) => v
                    .corrupt
                    .push(format!("{rel}: version {k} is not in the writer's log")),
                _ => v.lost += 1,
            }
        }
    }
    // Nothing but the slots, their directories and the writer's temporary files.
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else {
            v.corrupt.push(format!("cannot list {}", d.display()));
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() && rel.len() == 2 && rel.starts_with('d') {
                stack.push(p);
            } else if !(name.starts_with(".tmp-") || (0..DIR_SLOTS).any(|s| slot_path(s) == rel)) {
                v.corrupt.push(format!("{rel}: no transaction wrote it"));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::writer::{dir_content, dir_op, slot_path, sqlite_payload};

    fn log_of(txs: &[(u64, i64, Option<i64>)]) -> WriterLog {
        WriterLog {
            txs: txs
                .iter()
                .map(|(k, b, c)| {
                    (
                        *k,
                        Tx {
                            begun_ns: *b,
                            committed_ns: *c,
                        },
                    )
                })
                .collect(),
            ended_by: None,
        }
    }

    fn sqlite_db(path: &Path, seed: u64, n: u64) {
        let c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch(
            "CREATE TABLE drill_tx (id INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, payload BLOB NOT NULL);
             CREATE TABLE drill_state (one INTEGER PRIMARY KEY, last_id INTEGER NOT NULL, total_bytes INTEGER NOT NULL);",
        )
        .unwrap();
        let mut total = 0;
        for k in 1..=n {
            let p = sqlite_payload(seed, k);
            total += p.len() as i64;
            c.execute(
                "INSERT INTO drill_tx VALUES (?1, 0, ?2)",
                rusqlite::params![k as i64, p],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO drill_state VALUES (1, ?1, ?2)",
            rusqlite::params![n as i64, total],
        )
        .unwrap();
    }

    #[test]
    fn the_sqlite_check_sees_loss_later_transactions_and_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        sqlite_db(&db, 9, 5);
        // Transactions k began at 10k and committed at 10k + 5.
        let txs: Vec<_> = (1..=7)
            .map(|k| (k, 10 * k as i64, Some(10 * k as i64 + 5)))
            .collect();
        let log = log_of(&txs);
        let ok = check_sqlite(&db, &log, 9, (56, 58));
        assert_eq!(
            (ok.lost, ok.after_point, ok.committed_before_point),
            (0, 0, 5)
        );
        assert!(ok.corrupt.is_empty(), "{ok:?}");
        // A point said to start after transaction 6 committed: 6 is lost.
        let lost = check_sqlite(&db, &log, 9, (70, 72));
        assert_eq!(lost.lost, 1);
        // A point said to end before transaction 5 began: 5 came after it.
        let after = check_sqlite(&db, &log, 9, (30, 45));
        assert_eq!(after.after_point, 1);
        // Another seed's payloads: every row is damage.
        let bad = check_sqlite(&db, &log, 10, (56, 58));
        assert!(!bad.corrupt.is_empty());
        // A transaction applied in part.
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute("UPDATE drill_state SET last_id = 4", [])
            .unwrap();
        let part = check_sqlite(&db, &log, 9, (56, 58));
        assert!(
            part.corrupt.iter().any(|c| c.contains("in part")),
            "{part:?}"
        );
    }

    #[test]
    fn the_dir_check_sees_an_old_version_a_later_one_and_damage() {
        let seed = 4;
        // Find two transactions that write the same slot.
        let ks: Vec<u64> = (1..200).filter(|k| dir_op(seed, *k).1).collect();
        let (a, b) = ks
            .iter()
            .find_map(|a| {
                ks.iter()
                    .find(|b| *b > a && dir_op(seed, **b).0 == dir_op(seed, *a).0)
                    .map(|b| (*a, *b))
            })
            .unwrap();
        let slot = dir_op(seed, a).0;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join(format!("d{}", slot % 4))).unwrap();
        let log = log_of(&[(a, 10, Some(15)), (b, 20, Some(25))]);
        std::fs::write(root.join(slot_path(slot)), dir_content(seed, b, slot)).unwrap();
        let ok = check_dir(root, &log, seed, (30, 31));
        assert_eq!((ok.lost, ok.after_point, ok.restored), (0, 0, 1), "{ok:?}");
        assert!(ok.corrupt.is_empty(), "{ok:?}");
        // The point began after b committed but holds a's version: lost.
        std::fs::write(root.join(slot_path(slot)), dir_content(seed, a, slot)).unwrap();
        assert_eq!(check_dir(root, &log, seed, (30, 31)).lost, 1);
        // The point ended before b began but holds b's version: after the point.
        std::fs::write(root.join(slot_path(slot)), dir_content(seed, b, slot)).unwrap();
        assert_eq!(check_dir(root, &log, seed, (16, 18)).after_point, 1);
        // One byte changed: damage; a stray file: damage.
        let mut bytes = dir_content(seed, b, slot);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(root.join(slot_path(slot)), &bytes).unwrap();
        assert_eq!(check_dir(root, &log, seed, (30, 31)).corrupt.len(), 1);
        std::fs::write(root.join("stray"), b"x").unwrap();
        assert_eq!(check_dir(root, &log, seed, (30, 31)).corrupt.len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_bad_middle_line_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log");
        std::fs::write(&p, "B 1 10\nC 1 15\nB 2").unwrap();
        let log = WriterLog::read(&p).unwrap();
        assert_eq!(log.txs.len(), 1);
        std::fs::write(&p, "B 1 10\nX\nC 1 15\n").unwrap();
        let err = WriterLog::read(&p).unwrap_err();
        assert!(err.contains(":2: bad line"), "{err}");
    }
}
