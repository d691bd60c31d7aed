//! The hard rules' test cases, shared by `rules.rs` (the evaluator) and `real_postgres.rs`
//! (the same configurations on a real server): (rule id, server version, a configuration that
//! keeps the rule, one that breaks it, words the violation must contain). In each, settings
//! that lower a limit come first: PostgreSQL checks some limits at each `-c` in turn.

#[allow(dead_code)] // used by rules.rs, not by real_postgres.rs
pub const PG15: u32 = 150_004;

pub type Pairs = Vec<(&'static str, &'static str)>;
pub type Case = (&'static str, u32, Pairs, Pairs, Vec<&'static str>);

pub fn hard_cases() -> Vec<Case> {
    vec![
        (
            "wal_level_minimal_no_wal_senders",
            PG15,
            vec![("max_wal_senders", "0"), ("wal_level", "minimal")],
            vec![("wal_level", "minimal"), ("max_wal_senders", "10")],
            vec!["wal_level = minimal", "max_wal_senders = 0", "it is 10"],
        ),
        (
            "archive_mode_needs_wal_level",
            PG15,
            vec![
                ("max_wal_senders", "0"),
                ("archive_mode", "on"),
                ("wal_level", "replica"),
            ],
            vec![
                ("max_wal_senders", "0"),
                ("archive_mode", "always"),
                ("wal_level", "minimal"),
            ],
            vec!["archive_mode = always", "wal_level != minimal"],
        ),
        (
            "superuser_reserved_below_max_connections",
            PG15,
            vec![
                ("superuser_reserved_connections", "3"),
                ("max_connections", "4"),
            ],
            vec![
                ("superuser_reserved_connections", "3"),
                ("max_connections", "3"),
            ],
            vec![
                "superuser_reserved_connections (3)",
                "less than max_connections (3)",
            ],
        ),
        (
            "reserved_connections_below_max_connections",
            160_000,
            vec![
                ("superuser_reserved_connections", "3"),
                ("reserved_connections", "2"),
                ("max_connections", "6"),
            ],
            vec![
                ("superuser_reserved_connections", "3"),
                ("reserved_connections", "2"),
                ("max_connections", "5"),
            ],
            vec!["= 5 must be less than max_connections (5)"],
        ),
        (
            "max_backends_wal_senders",
            PG15,
            vec![
                ("max_connections", "100"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "10"),
            ],
            vec![
                ("max_connections", "262000"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "200"),
            ],
            vec!["max_wal_senders (200)", "must be at most 262142"],
        ),
        (
            "max_backends_worker_processes",
            PG15,
            vec![
                ("max_wal_senders", "0"),
                ("max_connections", "262000"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "139"),
            ],
            vec![
                ("max_wal_senders", "0"),
                ("max_connections", "262000"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "140"),
            ],
            vec!["= 262143 must be at most 262142"],
        ),
        (
            "max_backends_autovacuum_workers",
            PG15,
            vec![
                ("max_connections", "100"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "10"),
            ],
            vec![
                ("max_connections", "262100"),
                ("autovacuum_max_workers", "100"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "10"),
            ],
            vec!["autovacuum_max_workers (100)"],
        ),
        (
            "min_wal_size_two_segments",
            PG15,
            vec![("wal_segment_size", "16777216"), ("min_wal_size", "32")],
            vec![("wal_segment_size", "16777216"), ("min_wal_size", "16")],
            vec![
                "2 × wal_segment_size (16777216) = 33554432 must be at most 1048576 × \
                 min_wal_size (16) = 16777216",
            ],
        ),
        (
            "max_wal_size_two_segments",
            PG15,
            vec![("wal_segment_size", "16777216"), ("max_wal_size", "1024")],
            vec![("wal_segment_size", "16777216"), ("max_wal_size", "16")],
            vec!["max_wal_size (16)"],
        ),
        (
            "archive_library_xor_command",
            160_000,
            vec![
                ("archive_library", "basic_archive"),
                ("archive_command", ""),
            ],
            vec![
                ("archive_library", "basic_archive"),
                ("archive_command", "cp %p /a/%f"),
            ],
            vec!["archive_library = basic_archive", "archive_command = ''"],
        ),
        (
            "summarize_wal_needs_wal_level",
            170_000,
            vec![("summarize_wal", "on"), ("wal_level", "replica")],
            vec![("summarize_wal", "on"), ("wal_level", "minimal")],
            vec!["summarize_wal = on", "wal_level != minimal"],
        ),
    ]
}
