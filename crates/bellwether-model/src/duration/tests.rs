use super::*;
use proptest::prelude::*;

fn ms(v: u64) -> Dur {
    Dur(Duration::from_millis(v))
}

#[test]
fn every_documented_form_parses() {
    // The forms that docs/*.md have promised: the rollout and patch plans, the proxy's
    // configuration and admin API, the scenario files and the command-line flags.
    let cases = [
        ("250ms", ms(250)),
        ("500ms", ms(500)),
        ("2s", ms(2_000)),
        ("1.5s", ms(1_500)),
        ("2.5s", ms(2_500)),
        ("1.5m", ms(90_000)),
        ("1m", ms(60_000)),
        ("2m", ms(120_000)),
        ("5m", ms(300_000)),
        ("1h", ms(3_600_000)),
        ("24h", ms(86_400_000)),
        ("7d", ms(7 * 86_400_000)),
        ("30", ms(30_000)),
        ("3", ms(3_000)),
        ("0s", Dur::ZERO),
        ("0", Dur::ZERO),
        ("30000ms", ms(30_000)),
        ("1m30s", ms(90_000)),
        ("1h 30m", ms(5_400_000)),
        (" 2 s ", ms(2_000)),
        (".5s", ms(500)),
        ("250us", Dur(Duration::from_micros(250))),
        ("250µs", Dur(Duration::from_micros(250))),
        ("7ns", Dur(Duration::from_nanos(7))),
    ];
    for (text, want) in cases {
        assert_eq!(Dur::parse(text), Ok(want), "{text}");
    }
}

#[test]
fn fractions_are_exact_to_the_nanosecond() {
    assert_eq!(Dur::parse("0.1s").unwrap().0, Duration::from_millis(100));
    assert_eq!(Dur::parse("1.000000001s").unwrap().0, Duration::new(1, 1));
    // Digits below a nanosecond are dropped, not rounded.
    assert_eq!(Dur::parse("1.0000000019s").unwrap().0, Duration::new(1, 1));
    assert_eq!(Dur::parse("0.5d").unwrap().0, Duration::from_secs(43_200));
}

#[test]
fn the_upper_bound_is_inclusive() {
    assert_eq!(Dur::parse("1000000000s"), Ok(Dur::MAX));
    assert_eq!(Dur::parse("1000000000"), Ok(Dur::MAX));
    for text in [
        "1000000000.000000001s",
        "11575d 1h",
        "99999999999999999999999999999999999999999999d",
    ] {
        assert_eq!(
            Dur::parse(text),
            Err(DurationError::TooLong { text: text.into() }),
            "{text}"
        );
    }
    assert_eq!(
        Dur::parse("2000000000s").unwrap_err().to_string(),
        "`2000000000s` is longer than the longest duration, 1000000000s"
    );
}

#[test]
fn bad_text_says_what_is_wrong() {
    let cases = [
        ("soon", "expected a number at `soon`"),
        ("", "it is empty"),
        ("  ", "it is empty"),
        ("-1s", "a duration cannot be negative"),
        ("+1s", "expected a number at `+1s`"),
        ("5x", "unknown unit `x` (use ns, us, ms, s, m, h or d)"),
        ("1e3", "unknown unit `e`"),
        ("1sec", "unknown unit `sec`"),
        ("NaN", "expected a number at `NaN`"),
        ("inf", "expected a number at `inf`"),
        ("1m30", "`30` needs a unit"),
        ("1.5.5s", "`1.5` needs a unit"),
        ("s", "expected a number at `s`"),
        ("1s,2s", "expected a number at `,2s` (after a unit)"),
    ];
    for (text, reason) in cases {
        let err = Dur::parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "`{text}` is not a duration such as `2s` or `500ms`: "
            )),
            "{text}: {err}"
        );
        assert!(err.contains(reason), "{text}: {err}");
    }
}

#[test]
fn display_picks_the_largest_exact_unit() {
    let cases = [
        (ms(30_000), "30s"),
        (ms(1_500), "1500ms"),
        (ms(90_000), "90s"),
        (ms(120_000), "2m"),
        (ms(7 * 86_400_000), "7d"),
        (Dur::ZERO, "0s"),
        (Dur(Duration::new(1, 1)), "1000000001ns"),
        (Dur(Duration::from_micros(3)), "3us"),
        (Dur::MAX, "1000000000s"),
    ];
    for (d, text) in cases {
        assert_eq!(d.to_string(), text);
        assert_eq!(Dur::parse(text), Ok(d));
    }
}

#[test]
fn serde_reads_text_and_numbers_and_writes_text() {
    let d: Dur = serde_json::from_str("\"1m30s\"").unwrap();
    assert_eq!(d, ms(90_000));
    let d: Dur = serde_json::from_str("2").unwrap();
    assert_eq!(d, ms(2_000));
    let d: Dur = serde_json::from_str("0.25").unwrap();
    assert_eq!(d, ms(250));
    assert_eq!(serde_json::to_string(&ms(1_500)).unwrap(), "\"1500ms\"");
    let err = serde_json::from_str::<Dur>("-1").unwrap_err().to_string();
    assert!(err.contains("a duration cannot be negative"), "{err}");
    let err = serde_json::from_str::<Dur>("-0.5").unwrap_err().to_string();
    assert!(err.contains("at least 0"), "{err}");
    let err = serde_json::from_str::<Dur>("1e10").unwrap_err().to_string();
    assert!(err.contains("longer than the longest duration"), "{err}");
    let err = serde_json::from_str::<Dur>("true").unwrap_err().to_string();
    assert!(err.contains("a duration such as `2s` or `500ms`"), "{err}");
}

#[test]
fn from_str_and_parse_agree() {
    assert_eq!("2s".parse::<Dur>(), Ok(ms(2_000)));
    assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
    assert!(parse("2").is_ok());
}

proptest! {
    #[test]
    fn never_panics(text in "\\PC{0,40}") {
        let _ = Dur::parse(&text);
    }

    #[test]
    fn never_panics_on_near_misses(text in "[0-9. µa-z+-]{0,24}") {
        if let Ok(d) = Dur::parse(&text) {
            prop_assert!(d <= Dur::MAX);
        }
    }

    #[test]
    fn display_round_trips(nanos in 0u128..=Dur::MAX.0.as_nanos()) {
        let d = Dur(Duration::new((nanos / NANOS_PER_SEC) as u64, (nanos % NANOS_PER_SEC) as u32));
        prop_assert_eq!(Dur::parse(&d.to_string()), Ok(d));
    }

    #[test]
    fn parse_then_display_is_a_fixed_point(text in "[0-9]{1,6}(\\.[0-9]{1,4})?(ns|us|ms|s|m|h|d)") {
        match Dur::parse(&text) {
            Ok(d) => prop_assert_eq!(Dur::parse(&d.to_string()), Ok(d)),
            Err(e) => prop_assert_eq!(e, DurationError::TooLong { text }),
        }
    }

    #[test]
    fn compound_terms_add_up(a in 0u64..1_000, b in 0u64..60, c in 0u64..1_000) {
        let d = Dur::parse(&format!("{a}m{b}s {c}ms")).unwrap();
        prop_assert_eq!(d.0, Duration::from_millis(a * 60_000 + b * 1_000 + c));
    }
}
