use super::*;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn render(t: &str, host: &str, l: &[(&str, &str)]) -> String {
    QueryTemplate::parse(t)
        .unwrap()
        .render(host, &labels(l), 1000)
        .unwrap()
}

#[test]
fn placeholders_are_filled() {
    assert_eq!(
        render(
            r#"rate(http_requests_total{instance="{{host}}",code=~"5.."}[1m])"#,
            "web-01",
            &[]
        ),
        r#"rate(http_requests_total{instance="web-01",code=~"5.."}[1m])"#
    );
    assert_eq!(
        render(
            r#"sum(rate(x{host="{{ host }}", zone='{{labels.zone}}'}[{{interval}}]))"#,
            "db-2",
            &[("zone", "eu-1")]
        ),
        r#"sum(rate(x{host="db-2", zone='eu-1'}[1s]))"#
    );
    let t = QueryTemplate::parse("x[{{interval}}]").unwrap();
    assert_eq!(t.render("h", &labels(&[]), 1500).unwrap(), "x[1500ms]");
    assert_eq!(t.render("h", &labels(&[]), 60_000).unwrap(), "x[60s]");
    assert_eq!(
        QueryTemplate::parse(r#"up{a="{{host}}", b="{{labels.role}}"} # {{ignored in a comment"#)
            .unwrap()
            .vars()
            .cloned()
            .collect::<Vec<_>>(),
        vec![Var::Host, Var::Label("role".into())]
    );
}

#[test]
fn values_cannot_leave_their_string() {
    // A label value that tries to close the matcher and add a clause stays one string.
    let evil = r#"x"} or vector(1) or up{a=""#;
    assert_eq!(
        render(r#"up{zone="{{labels.zone}}"}"#, "h", &[("zone", evil)]),
        r#"up{zone="x\"} or vector(1) or up{a=\""}"#
    );
    assert_eq!(
        render(r#"up{zone='{{labels.zone}}'}"#, "h", &[("zone", "it's\\")]),
        r#"up{zone='it\'s\\'}"#
    );
    // Control characters cannot break the line.
    assert_eq!(
        render(
            r#"up{zone="{{labels.zone}}"}"#,
            "h",
            &[("zone", "a\nb\u{1}c\t")]
        ),
        r#"up{zone="a\nb\x01c\t"}"#
    );
    // After =~ the value is a literal, not a pattern: web.1 does not match web-1.
    assert_eq!(
        render(r#"up{instance=~"{{host}}:.*"}"#, "web.1", &[]),
        r#"up{instance=~"web\\.1:.*"}"#
    );
    assert_eq!(
        render(
            r#"up{zone!~ "{{labels.zone}}"}"#,
            "h",
            &[("zone", "a|b(c)*")]
        ),
        r#"up{zone!~ "a\\|b\\(c\\)\\*"}"#
    );
}

#[test]
fn a_missing_label_is_an_error_naming_host_and_label() {
    let t = QueryTemplate::parse(r#"up{zone="{{labels.zone}}"}"#).unwrap();
    let e = t
        .render("web-01", &labels(&[("role", "web")]), 1000)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "host web-01 has no label `zone`, which the query's {{labels.zone}} needs"
    );
}

#[test]
fn bad_templates_are_refused_with_the_reason() {
    let cases = [
        ("", "query must not be empty"),
        ("  ", "query must not be empty"),
        (r#"up{instance={{host}}}"#, "{{host}} must be inside a quoted string, as in instance=\"{{host}}\", so that the value is escaped"),
        ("up{instance=`{{host}}`}", "{{host}} cannot go in a raw (backtick) string, where nothing can be escaped; use double quotes"),
        (r#"up{a="{{hostname}}"}"#, "unknown placeholder {{hostname}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}} (did you mean {{host}}?)"),
        (r#"up{a="{{labels.}}"}"#, "unknown placeholder {{labels.}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}}"),
        (r#"up{a="{{labels.a-b}}"}"#, "unknown placeholder {{labels.a-b}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}}"),
        (r#"up{instance="{{ip}}:9100"}"#, "unknown placeholder {{ip}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}} (did you mean {{address}}?)"),
        (r#"up{instance="{{address}}:{{port}}"}"#, "unknown placeholder {{port}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}} (the host record has no port: write it in the query, as in instance=\"{{address}}:9100\")"),
        (r#"up{instance="{{args.host}}"}"#, "unknown placeholder {{args.host}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}} (did you mean {{host}}?)"),
        (r#"up{instance={{address}}}"#, "{{address}} must be inside a quoted string, as in instance=\"{{address}}\", so that the value is escaped"),
        ("up{instance=`{{address}}:9100`}", "{{address}} cannot go in a raw (backtick) string, where nothing can be escaped; use double quotes"),
        (r#"up{a="{{host"}"#, "a placeholder at byte 6 is not closed with `}}`"),
        (r#"up{a="{{host}}}"#, "a string opened with \" is not closed"),
        (r#"rate(x["{{interval}}"])"#, "{{interval}} is a duration and goes outside quotes, as in rate(x[{{interval}}])"),
    ];
    for (t, want) in cases {
        assert_eq!(QueryTemplate::parse(t).unwrap_err(), want, "{t:?}");
    }
    let long = format!("up{}", " ".repeat(MAX_QUERY_BYTES));
    assert!(QueryTemplate::parse(&long)
        .unwrap_err()
        .contains("at most 4096"));
}

#[test]
fn addresses() {
    assert_eq!(
        check_address("http://127.0.0.1:9090/").unwrap(),
        "http://127.0.0.1:9090"
    );
    assert_eq!(
        check_address("https://prom.example/prefix").unwrap(),
        "https://prom.example/prefix"
    );
    for (a, want) in [
        ("127.0.0.1:9090", "must start with http:// or https://"),
        ("http://", "has no host"),
        ("http:///x", "has no host"),
        ("http://p:9090/?x=1", "must not contain '?'"),
        ("http://p 9090", "must not contain ' '"),
    ] {
        let e = check_address(a).unwrap_err();
        assert!(e.contains(want), "{a}: {e}");
    }
}

/// Go's `strconv.Unquote` for the escapes [`escape_string`] writes, as Prometheus reads a
/// string literal: returns the value and the rest after the closing quote.
fn unquote(s: &str, quote: char) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => match it.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'x' => {
                    let h: String = [it.next()?.1, it.next()?.1].iter().collect();
                    out.push(char::from(u8::from_str_radix(&h, 16).ok()?));
                }
                c => out.push(c),
            },
            c if c == quote => return Some((out, &s[i + 1..])),
            '\n' => return None,
            c => out.push(c),
        }
    }
    None
}

/// RE2's reading of a quoted pattern as a literal: every `\X` is X.
fn unquote_meta(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        out.push(if c == '\\' { it.next().unwrap() } else { c });
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever a label holds, the rendered query keeps the template's text around it, and the
    /// string literal reads back (as Prometheus reads it) to exactly the value.
    #[test]
    fn any_value_reads_back_as_itself(value in "(?s).{0,40}", quote in proptest::sample::select(vec!['"', '\''])) {
        let t = format!("up{{zone={quote}{{{{labels.zone}}}}{quote}, job=\"x\"}}");
        let out = QueryTemplate::parse(&t).unwrap().render("h", &labels(&[("zone", &value)]), 1000).unwrap();
        let prefix = format!("up{{zone={quote}");
        proptest::prop_assert!(out.starts_with(&prefix));
        let (read, rest) = unquote(&out[prefix.len()..], quote).expect("a closed string");
        proptest::prop_assert_eq!(&read, &value);
        proptest::prop_assert_eq!(rest, ", job=\"x\"}");
        // As a regular expression it is the value, literally.
        let t = format!("up{{zone=~{quote}{{{{labels.zone}}}}{quote}}}");
        let out = QueryTemplate::parse(&t).unwrap().render("h", &labels(&[("zone", &value)]), 1000).unwrap();
        let prefix = format!("up{{zone=~{quote}");
        let (read, rest) = unquote(&out[prefix.len()..], quote).expect("a closed string");
        proptest::prop_assert_eq!(unquote_meta(&read), value);
        proptest::prop_assert_eq!(rest, "}");
    }

    /// Arbitrary templates never panic: they parse or say why not.
    #[test]
    fn the_template_parser_never_panics(t in "[a-z{}\"'`=~!#\\\\. \n]{0,60}") {
        if let Ok(q) = QueryTemplate::parse(&t) {
            let _ = q.render("h", &labels(&[("a", "\"\\")]), 1000);
        }
    }
}

#[test]
fn the_address_fills_in_escaped_and_its_absence_is_named() {
    let l = labels(&[("role", "web")]);
    let vars = |address| HostVars {
        name: "web-01",
        labels: &l,
        address,
    };
    let t =
        QueryTemplate::parse(r#"up{instance="{{address}}:9100", role="{{labels.role}}"}"#).unwrap();
    assert_eq!(
        t.render_for(&vars(Some("10.0.0.5")), 1000).unwrap(),
        r#"up{instance="10.0.0.5:9100", role="web"}"#
    );
    // After =~ the address is a literal: the dots of an IP address match only dots.
    let r = QueryTemplate::parse(r#"up{instance=~"{{address}}:.*"}"#).unwrap();
    assert_eq!(
        r.render_for(&vars(Some("10.0.0.5")), 1000).unwrap(),
        r#"up{instance=~"10\\.0\\.0\\.5:.*"}"#
    );
    // An address is data: a quote in it cannot end the string.
    assert_eq!(
        t.render_for(&vars(Some("a\"} or vector(1)")), 1000)
            .unwrap(),
        r#"up{instance="a\"} or vector(1):9100", role="web"}"#
    );
    let e = t.render_for(&vars(None), 1000).unwrap_err();
    assert_eq!(
        e,
        RenderError::MissingAddress {
            host: "web-01".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "host web-01 has no address, which the query's {{address}} needs: start its agent with --address (the host's IP address or DNS name)"
    );
    // The name-and-labels form has no address.
    assert!(t.render("web-01", &l, 1000).is_err());
    assert_eq!(
        t.vars().collect::<Vec<_>>(),
        vec![&Var::Address, &Var::Label("role".into())]
    );
}
