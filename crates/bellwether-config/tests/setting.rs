//! Values parsed as PostgreSQL 15 parses them, checked against a real server's answers.
//!
//! `fixtures/pg15_settings.json` is a PostgreSQL 15 server's `pg_settings` as a [`Catalog`];
//! `fixtures/pg15_values.tsv` is what the same server made of each (setting, input) pair with
//! `SET` (regenerate both with the commands in `docs/config-sources.md`).

use bellwether_config::setting::{Catalog, Context, Setting, Value, ValueError, VarType};

fn catalog() -> &'static Catalog {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| {
        let text = include_str!("fixtures/pg15_settings.json");
        serde_json::from_str(text).expect("the fixture is a Catalog")
    })
}

#[test]
fn the_fixture_holds_every_pg15_setting_and_each_current_value_parses() {
    let c = catalog();
    assert!(
        c.server_version_num / 10000 == 15,
        "{}",
        c.server_version_num
    );
    assert!(c.settings.len() >= 340, "{} settings", c.settings.len());
    for (name, s) in &c.settings {
        assert_eq!(name, &s.name);
        let v = s
            .current()
            .unwrap_or_else(|e| panic!("{name} = {:?} does not parse: {e}", s.value));
        // The base-unit form parses back to the same value (`data_directory_mode` shows
        // `0700`, octal, which is 448).
        assert_eq!(
            s.parse_value(&v.to_setting_string()),
            Ok(v.clone()),
            "{name}"
        );
        if s.vartype != VarType::Real && !s.value.starts_with('0') {
            assert_eq!(v.to_setting_string(), s.value, "{name}");
        }
    }
}

/// One row of `pg15_values.tsv` against our parser: the same acceptance, the same value.
#[test]
fn every_input_is_parsed_as_the_real_server_parsed_it() {
    let c = catalog();
    let text = include_str!("fixtures/pg15_values.tsv");
    let mut checked = 0;
    let mut failures = Vec::new();
    for row in text.lines() {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols.len(), 3, "bad fixture row {row:?}");
        let (name, input, want) = (cols[0], cols[1], cols[2]);
        let setting = c
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in the catalog"));
        let got = setting.parse_value(input);
        let ok = match (want.strip_prefix("ok:"), &got) {
            (None, Err(_)) => true,
            (Some(w), Ok(Value::Real(r))) => {
                let w: f64 = w.parse().unwrap();
                (w - r).abs() <= 1e-6 * w.abs().max(1e-9)
            }
            (Some(w), Ok(v)) => v.to_setting_string() == w,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name} = {input:?}: server {want}, ours {got:?}"));
        }
        checked += 1;
    }
    assert!(checked > 1000, "{checked} rows");
    assert!(
        failures.is_empty(),
        "{} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn setting(name: &str) -> Setting {
    catalog().get(name).unwrap().clone()
}

#[test]
fn documented_units_and_rounding() {
    // docs/15/config-setting.html: "30.1 GB will be converted to 30822 MB not 32319628902 B".
    assert_eq!(
        setting("max_wal_size").parse_value("30.1GB"),
        Ok(Value::Int(30822))
    );
    // A minutes setting (log_rotation_age, sighup, so the table above cannot SET it).
    let age = setting("log_rotation_age");
    assert_eq!(age.unit.as_deref(), Some("min"));
    assert_eq!(age.parse_value("1d"), Ok(Value::Int(1440)));
    assert_eq!(age.parse_value("2h"), Ok(Value::Int(120)));
    assert_eq!(
        age.parse_value("90s"),
        Ok(Value::Int(2)),
        "1.5 min rounds half to even"
    );
    assert_eq!(
        age.parse_value("150s"),
        Ok(Value::Int(2)),
        "2.5 min rounds half to even"
    );
    assert_eq!(age.parse_value("29s"), Ok(Value::Int(0)));
    assert!(matches!(
        age.parse_value("1kB"),
        Err(ValueError::BadUnit { .. })
    ));
    // Seconds (autovacuum_naptime: 1 s .. 2147483 s).
    let nap = setting("autovacuum_naptime");
    assert_eq!(nap.parse_value("1min"), Ok(Value::Int(60)));
    assert_eq!(nap.parse_value("1500ms"), Ok(Value::Int(2)));
    assert!(matches!(
        nap.parse_value("400ms"),
        Err(ValueError::OutOfRange { .. })
    ));
    // 8kB blocks.
    let sb = setting("shared_buffers");
    assert_eq!(sb.parse_value("128MB"), Ok(Value::Int(16384)));
    assert_eq!(sb.parse_value("1GB"), Ok(Value::Int(131072)));
    assert_eq!(
        sb.parse_value("12kB").ok(),
        None,
        "2 blocks < 16, out of range"
    );
    // Quoted as in SQL.
    assert_eq!(
        setting("wal_level").parse_value("'replica'"),
        Ok(Value::Str("replica".into()))
    );
    assert_eq!(
        setting("wal_level").parse_value("hot_standby"),
        Ok(Value::Str("replica".into()))
    );
    assert_eq!(
        setting("application_name").parse_value("'it''s'"),
        Ok(Value::Str("it's".into()))
    );
}

#[test]
fn bad_values_name_the_setting_the_value_and_the_allowed_range() {
    let c = catalog();
    let e = c.validate("work_mem", "32kB").unwrap_err();
    assert_eq!(
        e.to_string(),
        "work_mem = \"32kB\" is out of range: allowed 64 to 2147483647 kB"
    );
    let e = c.validate("shared_buffers", "1kB").unwrap_err();
    assert_eq!(
        e.to_string(),
        "shared_buffers = \"1kB\" is out of range: allowed 16 to 1073741823 (units of 8kB)"
    );
    let e = c.validate("work_mem", "64kb").unwrap_err();
    assert_eq!(
        e.to_string(),
        "work_mem = \"64kb\": unit \"kb\" is not valid here; use one of B, kB, MB, GB, TB"
    );
    let e = c.validate("statement_timeout", "5MB").unwrap_err();
    assert_eq!(
        e,
        ValueError::BadUnit {
            name: "statement_timeout".into(),
            value: "5MB".into(),
            unit: "MB".into(),
            allowed: ["us", "ms", "s", "min", "h", "d"]
                .map(String::from)
                .to_vec(),
        }
    );
    let e = c.validate("max_connections", "100kB").unwrap_err();
    assert_eq!(
        e.to_string(),
        "max_connections = \"100kB\": unit \"kB\" is not valid here; the setting takes no unit"
    );
    let e = c.validate("max_connections", "many").unwrap_err();
    assert_eq!(
        e.to_string(),
        "max_connections = \"many\": expected an integer"
    );
    let e = c.validate("random_page_cost", "-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "random_page_cost = \"-1\" is out of range: allowed 0 to 1.79769e308"
    );
    let e = c.validate("fsync", "maybe").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fsync = \"maybe\": expected a Boolean value"),
        "{e}"
    );
    let e = c.validate("wal_level", "archive2").unwrap_err();
    assert_eq!(
        e.to_string(),
        "wal_level = \"archive2\" is not one of minimal, replica, logical"
    );
    // Beyond the integer range is out of range too, not a silent wrap.
    assert!(matches!(
        c.validate("work_mem", "99999999999999999999"),
        Err(ValueError::OutOfRange { .. })
    ));
}

#[test]
fn unknown_settings_get_the_nearest_name_and_internal_ones_are_refused() {
    let c = catalog();
    let e = c.validate("shared_bufers", "1GB").unwrap_err();
    assert_eq!(
        e,
        ValueError::UnknownSetting {
            name: "shared_bufers".into(),
            suggestion: Some("shared_buffers".into())
        }
    );
    assert_eq!(
        e.to_string(),
        "unknown setting \"shared_bufers\" (did you mean \"shared_buffers\"?)"
    );
    assert_eq!(c.suggest("workmem").as_deref(), Some("work_mem"));
    assert_eq!(
        c.suggest("Max-Connections").as_deref(),
        Some("max_connections")
    );
    assert_eq!(c.suggest("zzzzzzzzzzzz"), None);
    assert_eq!(
        c.suggest("ab"),
        None,
        "a two-letter name is too short to guess"
    );
    assert_eq!(
        c.validate("no_such_thing", "1").unwrap_err().to_string(),
        "unknown setting \"no_such_thing\""
    );
    let block = c.get("block_size").unwrap();
    assert_eq!(block.context, Context::Internal);
    assert_eq!(
        c.validate("block_size", "8192"),
        Err(ValueError::Internal {
            name: "block_size".into()
        })
    );
    // Names are case-insensitive as in PostgreSQL.
    assert_eq!(
        c.validate("datestyle", "ISO, DMY"),
        Ok(Value::Str("ISO, DMY".into()))
    );
    assert_eq!(c.validate("WORK_MEM", "4MB"), Ok(Value::Int(4096)));
}

#[test]
fn enums_keep_the_catalog_spelling_and_accept_hidden_aliases() {
    let c = catalog();
    assert_eq!(
        c.validate("ssl_min_protocol_version", "tlsv1.3"),
        Ok(Value::Str("TLSv1.3".into()))
    );
    assert_eq!(
        c.validate("huge_pages", "TRUE"),
        Ok(Value::Str("on".into()))
    );
    assert_eq!(
        c.validate("archive_mode", "0"),
        Ok(Value::Str("off".into()))
    );
    assert_eq!(
        c.validate("wal_compression", "on"),
        Ok(Value::Str("pglz".into()))
    );
    assert_eq!(
        c.validate("log_min_messages", "DEBUG"),
        Ok(Value::Str("debug2".into()))
    );
    assert!(c.validate("password_encryption", "on").is_err());
}

#[test]
fn settings_without_bounds_still_refuse_infinity() {
    let mut s = setting("random_page_cost");
    s.min = None;
    s.max = None;
    assert!(s.parse_value("inf").is_err());
    assert_eq!(s.parse_value("1e300"), Ok(Value::Real(1e300)));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input against any kind of setting is a value or an error naming the setting.
        #[test]
        fn parse_value_never_panics(input in ".{0,24}", pick in 0usize..8) {
            let names = ["work_mem", "shared_buffers", "statement_timeout", "log_rotation_age",
                "random_page_cost", "fsync", "wal_level", "search_path"];
            let s = setting(names[pick]);
            match s.parse_value(&input) {
                Ok(Value::Int(i)) => {
                    prop_assert!(s.min.unwrap() <= i as f64 && i as f64 <= s.max.unwrap());
                }
                Ok(Value::Real(r)) => prop_assert!(r.is_finite()),
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().starts_with(names[pick]), "{}", e),
            }
        }

        /// Inputs built from the pieces of the number grammar (signs, `0x`, `.`, `e`, units,
        /// spaces) reach every branch of the number parsers; none panics, and whatever is
        /// accepted is in range.
        #[test]
        fn number_shaped_inputs_never_panic(
            parts in prop::collection::vec(prop::sample::select(vec![
                "0", "1", "7", "9", "08", "0x", "0X", "f", "+", "-", ".", "e", "E", "p", " ",
                "\t", "kB", "MB", "GB", "TB", "B", "us", "ms", "s", "min", "h", "d", "inf",
                "nan", "(", ")", "'", "99999999999999999999", "é"]), 0..8),
            pick in 0usize..5,
        ) {
            let names = ["work_mem", "shared_buffers", "statement_timeout", "log_rotation_age",
                "vacuum_cost_delay"];
            let s = setting(names[pick]);
            let input = parts.concat();
            match s.parse_value(&input) {
                Ok(v) => {
                    let x = v.as_f64().unwrap();
                    prop_assert!(x.is_finite() && s.min.unwrap() <= x && x <= s.max.unwrap());
                }
                Err(e) => prop_assert!(e.to_string().starts_with(names[pick]), "{}", e),
            }
        }

        /// Whole multiples of the larger memory units are exact.
        #[test]
        fn memory_units_multiply_exactly(n in 1i64..2048, u in 0usize..3) {
            let (unit, kb) = [("MB", 1024i64), ("GB", 1 << 20), ("TB", 1 << 30)][u];
            let want = n * kb;
            let got = setting("work_mem").parse_value(&format!("{n}{unit}"));
            if want <= i64::from(i32::MAX) {
                prop_assert_eq!(got, Ok(Value::Int(want)));
            } else {
                prop_assert!(matches!(got, Err(ValueError::OutOfRange { .. })), "{:?}", got);
            }
            // 8kB blocks: an exact eighth.
            let got = setting("shared_buffers").parse_value(&format!("{n}{unit}"));
            if want / 8 <= 1073741823 {
                prop_assert_eq!(got, Ok(Value::Int(want / 8)));
            }
        }

        /// Numbers written in the base unit come back unchanged.
        #[test]
        fn base_unit_numbers_round_trip(n in 64i64..=2147483647) {
            let s = setting("work_mem");
            prop_assert_eq!(s.parse_value(&n.to_string()), Ok(Value::Int(n)));
            prop_assert_eq!(s.parse_value(&format!("{n}kB")), Ok(Value::Int(n)));
        }
    }
}
