//! Plain config files of other services as flat `dotted.key → value` maps.

use std::collections::BTreeMap;

use bellwether_config::plain::{parse, Format, PlainError, YAML_MAX_BYTES};
use proptest::prelude::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn formats_by_extension_and_by_name() {
    for (path, f) in [
        ("/etc/app/app.ini", Format::Ini),
        ("app.YAML", Format::Yaml),
        ("a/b.yml", Format::Yaml),
        ("x.json", Format::Json),
        ("Cargo.toml", Format::Toml),
        ("/etc/redis/redis.conf", Format::KeyValue),
        ("app.properties", Format::KeyValue),
        ("/srv/.env", Format::KeyValue),
        ("/srv/prod.env", Format::KeyValue),
        ("Makefile", Format::KeyValue),
        ("/etc/.yaml/settings", Format::KeyValue),
        (".json", Format::KeyValue),
    ] {
        assert_eq!(Format::from_path(path), f, "{path}");
    }
    assert_eq!(Format::parse("kv"), Some(Format::KeyValue));
    assert_eq!(Format::parse("yml"), Some(Format::Yaml));
    assert_eq!(Format::parse("xml"), None);
}

#[test]
fn key_value_files() {
    let text = "# comment\n; also a comment\n\nexport DATABASE_URL=postgres://db:5432/app\n\
                PORT = 8080\nname: my app  # trailing comment\nQUOTED=\"a \\\"b\\\"\\tc\" # c\n\
                SINGLE='x # y'\nEMPTY=\nurl=http://x/#frag\r\nPORT=9090\nexported=1\n";
    assert_eq!(
        parse(text, Format::KeyValue, ".env").unwrap(),
        map(&[
            ("DATABASE_URL", "postgres://db:5432/app"),
            ("EMPTY", ""),
            ("PORT", "9090"),
            ("QUOTED", "a \"b\"\tc"),
            ("SINGLE", "x # y"),
            ("exported", "1"),
            ("name", "my app"),
            ("url", "http://x/#frag"),
        ])
    );
}

#[test]
fn key_value_errors_name_the_file_and_line() {
    let e = parse("a=1\njust words\n", Format::KeyValue, "/etc/x.conf").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/x.conf:2: expected KEY = VALUE or KEY: VALUE, found \"just words\""
    );
    let e = parse("a=1\n\n = 3", Format::KeyValue, "f").unwrap_err();
    assert_eq!(e.line, Some(3));
    let e = parse("A=\"open\n", Format::KeyValue, "f").unwrap_err();
    assert_eq!(
        e.to_string(),
        "f:1: A: a double-quoted value is not closed on its line"
    );
    let e = parse("A='x' y\n", Format::KeyValue, "f").unwrap_err();
    assert_eq!(
        e.to_string(),
        "f:1: A: text after the closing quote: \" y\""
    );
}

#[test]
fn ini_files() {
    let text = "top = 1\n[server]\nport = 8080\nhost: example.org\n; c\n# c\n\
                [paths]\ndata = C:\\data\\new\nname = \"quoted\"\n[server]\nport = 9090\n";
    assert_eq!(
        parse(text, Format::Ini, "app.ini").unwrap(),
        map(&[
            ("paths.data", "C:\\data\\new"),
            ("paths.name", "quoted"),
            ("server.host", "example.org"),
            ("server.port", "9090"),
            ("top", "1"),
        ])
    );
    assert_eq!(
        parse("[s]\nport = 8080 ; not a comment\n", Format::Ini, "f").unwrap(),
        map(&[("s.port", "8080 ; not a comment")])
    );
    let e = parse("[s]\na = 1\nlonely\nb = 2\n", Format::Ini, "app.ini").unwrap_err();
    assert_eq!(
        e.to_string(),
        "app.ini:3: expected KEY = VALUE or KEY: VALUE, found \"lonely\""
    );
    let e = parse("[ok]\na = 1\n[broken\nb = 2\n", Format::Ini, "app.ini").unwrap_err();
    assert_eq!(e.file, "app.ini");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn yaml_files() {
    let text = "server:\n  port: 8080\n  ratio: 1.50\n  debug: true\n  mode: yes\n\
                hosts:\n  - a.example\n  - name: b\n    weight: 2\nempty_list: []\nempty_map: {}\n\
                nothing: ~\nquoted: \"007\"\nbig: 18446744073709551615\ninf: .inf\n\
                a.b: dotted\n";
    assert_eq!(
        parse(text, Format::Yaml, "app.yaml").unwrap(),
        map(&[
            ("a.b", "dotted"),
            ("big", "18446744073709551615"),
            ("empty_list", "[]"),
            ("empty_map", "{}"),
            ("hosts.0", "a.example"),
            ("hosts.1.name", "b"),
            ("hosts.1.weight", "2"),
            ("inf", ".inf"),
            ("nothing", ""),
            ("quoted", "007"),
            ("server.debug", "true"),
            ("server.mode", "yes"),
            ("server.port", "8080"),
            ("server.ratio", "1.5"),
        ])
    );
    assert_eq!(parse("", Format::Yaml, "f").unwrap(), map(&[]));
    assert_eq!(
        parse("- x\n- y\n", Format::Yaml, "f").unwrap(),
        map(&[("0", "x"), ("1", "y")])
    );
}

#[test]
fn yaml_errors_and_limits() {
    let e = parse("a: 1\nb: [\n", Format::Yaml, "app.yaml").unwrap_err();
    assert_eq!(e.file, "app.yaml");
    assert!(e.line.is_some(), "{e}");
    let e = parse("a: 1\nb: 2\na: 3\n", Format::Yaml, "app.yaml").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("duplicate"), "{e}");
    let e = parse("just a string\n", Format::Yaml, "f").unwrap_err();
    assert!(e.message.contains("expected a mapping or a list"), "{e}");
    let e = parse("a: 1\n---\nb: 2\n", Format::Yaml, "f").unwrap_err();
    assert_eq!(e.file, "f");
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse(&deep, Format::Yaml, "f").is_err());
    let big = format!("a: \"{}\"\n", "x".repeat(YAML_MAX_BYTES));
    let e = parse(&big, Format::Yaml, "f").unwrap_err();
    assert!(e.message.contains("limit"), "{e}");
    // An alias bomb is refused by the alias budget.
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n";
    assert!(parse(bomb, Format::Yaml, "f").is_err());
    let e = parse("? [a, b]\n: 1\n", Format::Yaml, "f").unwrap_err();
    assert!(e.message.contains("mapping key"), "{e}");
}

#[test]
fn json_files() {
    let text = r#"{"server": {"port": 8080, "ratio": 0.5, "tags": ["a", "b"], "x": null},
                   "on": true, "big": 1e400, "n": -12}"#;
    let e = parse(text, Format::Json, "f.json").unwrap_err();
    assert!(e.message.contains("number out of range"), "{e}");
    let text = text.replace("1e400", "1e20");
    assert_eq!(
        parse(&text, Format::Json, "f.json").unwrap(),
        map(&[
            ("big", "1e20"),
            ("n", "-12"),
            ("on", "true"),
            ("server.port", "8080"),
            ("server.ratio", "0.5"),
            ("server.tags.0", "a"),
            ("server.tags.1", "b"),
            ("server.x", ""),
        ])
    );
    let e = parse("{\n\"a\": 1,\n\"b\": }\n", Format::Json, "f.json").unwrap_err();
    assert_eq!(
        e,
        PlainError {
            file: "f.json".into(),
            line: Some(3),
            message: "expected value".into()
        }
    );
    assert_eq!(e.to_string(), "f.json:3: expected value");
    assert!(parse("42", Format::Json, "f").is_err());
    assert_eq!(parse("null", Format::Json, "f").unwrap(), map(&[]));
    assert!(parse(&"[".repeat(100_000), Format::Json, "f").is_err());
}

#[test]
fn toml_files() {
    let text = "title = \"x\"\n[server]\nport = 8080\nstart = 1979-05-27T07:32:00Z\n\
                [[peers]]\nname = \"a\"\n[[peers]]\nname = \"b\"\n[server.limits]\nrate = 2.5\n";
    assert_eq!(
        parse(text, Format::Toml, "c.toml").unwrap(),
        map(&[
            ("peers.0.name", "a"),
            ("peers.1.name", "b"),
            ("server.limits.rate", "2.5"),
            ("server.port", "8080"),
            ("server.start", "1979-05-27T07:32:00Z"),
            ("title", "x"),
        ])
    );
    let e = parse("a = 1\nb = \n", Format::Toml, "c.toml").unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("c.toml", Some(2)));
    let e = parse("a = 1\na = 2\n", Format::Toml, "c.toml").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(parse(&format!("a = {}", "[".repeat(10_000)), Format::Toml, "f").is_err());
}

fn format() -> impl Strategy<Value = Format> {
    prop::sample::select(vec![
        Format::KeyValue,
        Format::Ini,
        Format::Yaml,
        Format::Json,
        Format::Toml,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Any text in any format is a map or an error naming the file.
    #[test]
    fn parse_never_panics(text in "(?s).{0,160}", f in format()) {
        if let Err(e) = parse(&text, f, "f") {
            prop_assert_eq!(e.file.as_str(), "f");
            if let Some(l) = e.line {
                // YAML counts a lone \r as a line break too.
                let lines = text.replace("\r\n", "\n").replace('\r', "\n").split('\n').count();
                prop_assert!(l >= 1 && l as usize <= lines + 1, "{} {:?}", e, text);
                prop_assert!(!e.message.contains(" at line "), "{}", e);
            }
        }
    }

    /// Text built from each format's own punctuation, to reach the parsers' deeper paths.
    #[test]
    fn parse_never_panics_on_structured_noise(
        parts in prop::collection::vec(prop::sample::select(vec![
            "a", "b.c", "=", ":", " ", "\n", "  ", "- ", "[", "]", "{", "}", "\"", "'", ",",
            "#", ";", "&x", "*x", "1", "1.5", "true", "null", "~", "\\", "[[t]]", "export ",
            "? ", "!!str ", "<<: ", "é"]), 0..40),
        f in format(),
    ) {
        let _ = parse(&parts.concat(), f, "f");
    }

    /// A flat map written as JSON comes back unchanged.
    #[test]
    fn json_of_a_flat_map_round_trips(m in prop::collection::btree_map("[a-z]{1,6}", ".{0,12}", 0..8)) {
        let text = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(parse(&text, Format::Json, "f").unwrap(), m);
    }
}
