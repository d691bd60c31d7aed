//! `postgresql.conf` syntax and includes, checked against what a real PostgreSQL 15 reads
//! (`fixtures/pg15_conf.tsv`, from `postgres -C`; see `fixtures/pg15_conf.sh`).

use bellwether_config::pgconf::{
    effective, load, parse, resolve, ConfEntry, ConfError, Directive, MapSource, MAX_DEPTH,
};
use proptest::prelude::*;

fn set(name: &str, value: &str, file: &str, line: u32) -> ConfEntry {
    ConfEntry {
        name: name.into(),
        value: value.into(),
        file: file.into(),
        line,
    }
}

#[test]
fn every_line_is_read_as_the_real_server_reads_it() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for row in include_str!("fixtures/pg15_conf.tsv").lines() {
        let cols: Vec<&str> = row.split('\t').collect();
        // The line itself may hold tabs: the name and result are the last two columns.
        let (want, name) = (cols[cols.len() - 1], cols[cols.len() - 2]);
        let line = cols[..cols.len() - 2].join("\t");
        let got = parse(&line, "postgresql.conf");
        let ours = match &got {
            Ok(d) => match d.as_slice() {
                [Directive::Set(e)] if e.name == name => format!("ok:{}", e.value),
                other => format!("{other:?}"),
            },
            Err(_) => "error".to_string(),
        };
        if ours != want {
            failures.push(format!("{line:?}: server {want}, ours {ours} ({got:?})"));
        }
        checked += 1;
    }
    assert!(checked >= 40, "{checked} rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_file_becomes_entries_and_include_directives_in_order() {
    let text = "# a comment\n\
                \n\
                Shared_Buffers = 128MB   # inline\n\
                work_mem '4MB'\n\
                include 'extra.conf'\n\
                INCLUDE_IF_EXISTS = 'maybe.conf'\n\
                include_dir 'conf.d'\n\
                custom.opt = 'x y'";
    let d = parse(text, "/etc/pg/postgresql.conf").unwrap();
    assert_eq!(
        d,
        vec![
            Directive::Set(set("shared_buffers", "128MB", "/etc/pg/postgresql.conf", 3)),
            Directive::Set(set("work_mem", "4MB", "/etc/pg/postgresql.conf", 4)),
            Directive::Include {
                path: "extra.conf".into(),
                if_exists: false,
                line: 5
            },
            Directive::Include {
                path: "maybe.conf".into(),
                if_exists: true,
                line: 6
            },
            Directive::IncludeDir {
                path: "conf.d".into(),
                line: 7
            },
            Directive::Set(set("custom.opt", "x y", "/etc/pg/postgresql.conf", 8)),
        ]
    );
    assert_eq!(parse("", "f").unwrap(), vec![]);
    assert_eq!(parse("\r\n\t \n# only\n", "f").unwrap(), vec![]);
}

#[test]
fn escapes_in_quoted_values() {
    let one = |v: &str| match parse(&format!("x = {v}"), "f").unwrap().as_slice() {
        [Directive::Set(e)] => e.value.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(one(r"'a\nb\tc\rd\be\ff'"), "a\nb\tc\rd\u{8}e\u{c}f");
    assert_eq!(one(r"'\101\60\7'"), "A0\u{7}");
    assert_eq!(
        one(r"'a\0b'"),
        "a",
        "a NUL ends the value as it ends PostgreSQL's C string"
    );
    assert_eq!(one("'café'"), "café");
    assert_eq!(one("café"), "café", "bytes above 0x7f are letters");
    let e = parse(r"x = '\377'", "f").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("not valid UTF-8"), "{e}");
}

#[test]
fn syntax_errors_name_the_file_the_line_and_the_token() {
    let e = parse("a = 1\nb = 2\nwork_mem = 1.5MB\n", "/d/postgresql.conf").unwrap_err();
    assert_eq!(
        e,
        ConfError {
            file: "/d/postgresql.conf".into(),
            line: 3,
            message: "syntax error near token \"MB\"".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "/d/postgresql.conf:3: syntax error near token \"MB\""
    );
    let e = parse("\n\nwork_mem =\n", "f").unwrap_err();
    assert_eq!(e.to_string(), "f:3: syntax error near end of line");
    let e = parse("work_mem = ", "f").unwrap_err();
    assert_eq!(e.to_string(), "f:1: syntax error near end of line");
    let e = parse("x = /abs\n", "f").unwrap_err();
    assert_eq!(e.to_string(), "f:1: syntax error near token \"/\"");
    let e = parse("x = 'open\ny = 1\n", "f").unwrap_err();
    assert_eq!(e.line, 1);
}

fn tree() -> MapSource {
    MapSource::new([
        (
            "/pg/postgresql.conf",
            "work_mem = 1MB\ninclude 'extra.conf'\ninclude_dir 'conf.d'\n\
             include_if_exists 'missing.conf'\nmax_connections = 50\n",
        ),
        ("/pg/extra.conf", "work_mem = 2MB\n"),
        ("/pg/conf.d/b.conf", "work_mem = 4MB\n"),
        (
            "/pg/conf.d/a.conf",
            "work_mem = 3MB\ninclude 'sub/x.conf'\n",
        ),
        ("/pg/conf.d/sub/x.conf", "shared_buffers = 1GB\n"),
        ("/pg/conf.d/.hidden.conf", "work_mem = 99MB\n"),
        ("/pg/conf.d/notes.txt", "this is not read\n"),
        ("/pg/conf.d/c.conf.bak", "work_mem = 98MB\n"),
        ("/pg/conf.d/.conf", "work_mem = 97MB\n"),
    ])
}

#[test]
fn includes_are_followed_in_reading_order_relative_to_the_including_file() {
    let entries = load("/pg/postgresql.conf", &tree()).unwrap();
    assert_eq!(
        entries,
        vec![
            set("work_mem", "1MB", "/pg/postgresql.conf", 1),
            set("work_mem", "2MB", "/pg/extra.conf", 1),
            set("work_mem", "3MB", "/pg/conf.d/a.conf", 1),
            set("shared_buffers", "1GB", "/pg/conf.d/sub/x.conf", 1),
            set("work_mem", "4MB", "/pg/conf.d/b.conf", 1),
            set("max_connections", "50", "/pg/postgresql.conf", 5),
        ]
    );
    let last = effective(&entries);
    assert_eq!(last["work_mem"].value, "4MB");
    assert_eq!(last["work_mem"].file, "/pg/conf.d/b.conf");
    assert_eq!(last.len(), 3);
}

#[test]
fn include_errors_name_the_including_file_and_line() {
    let src = MapSource::new([("/pg/postgresql.conf", "a = 1\ninclude 'gone.conf'\n")]);
    let e = load("/pg/postgresql.conf", &src).unwrap_err();
    assert_eq!(e.file, "/pg/postgresql.conf");
    assert_eq!(e.line, 2);
    assert!(
        e.message
            .starts_with("could not open configuration file \"/pg/gone.conf\""),
        "{e}"
    );

    let src = MapSource::new([("/pg/postgresql.conf", "include_dir 'nodir'\n")]);
    let e = load("/pg/postgresql.conf", &src).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "/pg/postgresql.conf:1: could not open configuration directory \"/pg/nodir\""
        ),
        "{e}"
    );

    let src = MapSource::new([("/pg/postgresql.conf", "include ''\n")]);
    let e = load("/pg/postgresql.conf", &src).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/pg/postgresql.conf:1: empty configuration file name: \"\""
    );

    let src = MapSource::new([
        ("/pg/postgresql.conf", "a = 1\n"),
        ("/pg/x.conf", "b = 'open\n"),
    ]);
    let e = load("/pg/y.conf", &src).unwrap_err();
    assert_eq!(e.file, "/pg/y.conf");
    assert_eq!(e.line, 0);

    // A syntax error in an included file names that file.
    let src = MapSource::new([
        ("/pg/postgresql.conf", "include 'x.conf'\n"),
        ("/pg/x.conf", "\nb = 'open\n"),
    ]);
    let e = load("/pg/postgresql.conf", &src).unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("/pg/x.conf", 2));
}

#[test]
fn cycles_and_deep_nesting_are_refused() {
    let src = MapSource::new([("/pg/postgresql.conf", "include 'postgresql.conf'\n")]);
    let e = load("/pg/postgresql.conf", &src).unwrap_err();
    assert!(
        e.message
            .starts_with("configuration file recursion in \"/pg/postgresql.conf\""),
        "{e}"
    );

    let src = MapSource::new([
        ("/pg/postgresql.conf", "include 'a.conf'\n"),
        ("/pg/a.conf", "x = 1\ninclude './sub/../b.conf'\n"),
        ("/pg/b.conf", "include_dir '.'\n"),
    ]);
    let e = load("/pg/postgresql.conf", &src).unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("/pg/b.conf", 1));
    assert!(e.message.contains("recursion"), "{e}");
    assert!(
        e.message.contains("/pg/a.conf → /pg/b.conf → /pg/a.conf"),
        "{e}"
    );

    // A chain of MAX_DEPTH includes is read; one more is refused.
    let chain = |n: usize| {
        let mut files: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("/c/f{i}.conf"),
                    format!("k{i} = {i}\ninclude 'f{}.conf'\n", i + 1),
                )
            })
            .collect();
        files.push((format!("/c/f{n}.conf"), "last = 1\n".to_string()));
        MapSource::new(files)
    };
    let ok = load("/c/f0.conf", &chain(MAX_DEPTH)).unwrap();
    assert_eq!(ok.len(), MAX_DEPTH + 1);
    let e = load("/c/f0.conf", &chain(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("/c/f10.conf", 2));
    assert!(e.message.contains("maximum nesting depth exceeded"), "{e}");
}

#[test]
fn paths_resolve_as_postgresql_does() {
    assert_eq!(resolve("/pg/postgresql.conf", "x.conf"), "/pg/x.conf");
    assert_eq!(resolve("/pg/postgresql.conf", "/etc/x.conf"), "/etc/x.conf");
    assert_eq!(
        resolve("/pg/conf.d/a.conf", "../b//c/./d.conf"),
        "/pg/b/c/d.conf"
    );
    assert_eq!(resolve("/postgresql.conf", "x.conf"), "/x.conf");
    assert_eq!(resolve("/pg/a.conf", "../../../x.conf"), "/x.conf");
    assert_eq!(resolve("postgresql.conf", "x.conf"), "x.conf");
    assert_eq!(resolve("d/postgresql.conf", "../../x.conf"), "../x.conf");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Any text is entries or an error that names the file and a line inside it.
    #[test]
    fn parse_never_panics(text in "(?s).{0,200}") {
        match parse(&text, "f.conf") {
            Ok(ds) => for d in ds {
                if let Directive::Set(e) = d {
                    prop_assert_eq!(e.name.clone(), e.name.to_ascii_lowercase());
                    prop_assert!(e.line as usize <= text.lines().count().max(1));
                }
            },
            Err(e) => {
                prop_assert_eq!(e.file.as_str(), "f.conf");
                prop_assert!(e.line >= 1 && e.line as usize <= text.split('\n').count());
            }
        }
    }

    /// Lines made of the grammar's own pieces, so the parser's deeper paths are reached.
    #[test]
    fn parse_never_panics_on_near_grammatical_lines(
        lines in prop::collection::vec(
            prop::collection::vec(
                prop::sample::select(vec!["work_mem", "a.b", "=", " ", "'", "''", "\\", "\\1",
                    "#", "1", "0x", "1.5", "e", "-", "+", ".", "kB", "/", "\t", "\r", "é",
                    "include", "'x'", "\0"]),
                0..8),
            0..8),
    ) {
        let text: String = lines.iter().map(|l| l.concat()).collect::<Vec<_>>().join("\n");
        let _ = parse(&text, "f.conf");
    }
}

/// Random bytes (made valid UTF-8 lossily), fuzz-style: 20,000 inputs from a fixed seed.
#[test]
fn random_bytes_never_panic() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"abz_.=#'\\\n\t\r 0189xXeE+-/:kBMG\"\x00\xc3\xa9\xff";
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 4 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text, "f.conf");
        let src = MapSource::new([("/f.conf", text.as_ref())]);
        let _ = load("/f.conf", &src);
    }
}

#[test]
fn entries_are_checked_against_the_catalog_with_file_and_line() {
    let catalog: bellwether_config::setting::Catalog =
        serde_json::from_str(include_str!("fixtures/pg15_settings.json")).unwrap();
    let text = "work_mem = 32kB\nshared_bufers = 1GB\nmax_connections = 100\n\
                my_ext.knob = anything\nblock_size = 4096\nwal_level = replica\n\
                fsync = maybe\nDateStyle = 'iso, mdy'\n";
    let src = MapSource::new([("/pg/postgresql.conf", text)]);
    let entries = load("/pg/postgresql.conf", &src).unwrap();
    let errors = bellwether_config::pgconf::check(&entries, &catalog);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "/pg/postgresql.conf:1: work_mem = \"32kB\" is out of range: allowed 64 to 2147483647 kB",
            "/pg/postgresql.conf:2: unknown setting \"shared_bufers\" (did you mean \"shared_buffers\"?)",
            "/pg/postgresql.conf:5: block_size cannot be changed (context internal)",
            "/pg/postgresql.conf:7: fsync = \"maybe\": expected a Boolean value (on, off, true, false, yes, no, 1, 0)",
        ]
    );
}
