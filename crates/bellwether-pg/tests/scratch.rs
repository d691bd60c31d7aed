//! Scratch clusters: real initdb and trial starts of real postgres.

use std::collections::BTreeMap;

use bellwether_pg::scratch::Scratch;
use bellwether_pg::testing::find_test_bindir;

fn vals(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn trial_starts_accept_good_values_and_refuse_conflicts_with_the_message() {
    let s = Scratch::init(find_test_bindir().unwrap()).unwrap();
    let ok = s.try_start(&BTreeMap::new()).unwrap();
    assert!(ok.started, "{ok:?}");
    let ok = s
        .try_start(&vals(&[("work_mem", "8MB"), ("wal_level", "replica")]))
        .unwrap();
    assert!(ok.started, "{ok:?}");

    let bad = s
        .try_start(&vals(&[
            ("wal_level", "minimal"),
            ("max_wal_senders", "10"),
        ]))
        .unwrap();
    assert!(!bad.started);
    assert!(bad.message.contains("max_wal_senders"), "{}", bad.message);
    assert!(bad.message.contains("FATAL"), "{}", bad.message);

    let bad = s.try_start(&vals(&[("shared_buffers", "1kB")])).unwrap();
    assert!(!bad.started);
    assert!(bad.message.contains("shared_buffers"), "{}", bad.message);

    // A refused start is cheap: the median of a few.
    let mut ms: Vec<u64> = (0..5)
        .map(|_| {
            s.try_start(&vals(&[
                ("wal_level", "minimal"),
                ("max_wal_senders", "10"),
            ]))
            .unwrap()
            .ms
        })
        .collect();
    ms.sort();
    eprintln!("refused start: {ms:?} ms");
    assert!(ms[2] < 1_000, "{ms:?}");
}

#[test]
fn parallel_trials_use_separate_copies() {
    let s = Scratch::init(find_test_bindir().unwrap()).unwrap();
    let results: Vec<_> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    s.try_start(&vals(&[("work_mem", &format!("{}MB", i + 1))]))
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r.started), "{results:?}");
}

#[test]
fn show_computes_a_value_or_gives_the_error() {
    let s = Scratch::init(find_test_bindir().unwrap()).unwrap();
    let v = s
        .show("shared_buffers", &vals(&[("shared_buffers", "64MB")]))
        .unwrap();
    assert_eq!(v.as_deref(), Ok("8192"), "64MB in 8kB pages");
    let v = s
        .show("work_mem", &vals(&[("work_mem", "1 parsec")]))
        .unwrap();
    let err = v.unwrap_err();
    assert!(err.contains("work_mem"), "{err}");
    // A value with a quote cannot break out of the trial's file; a line break is refused.
    let t = s
        .try_start(&vals(&[("application_name", "x' shared_buffers = '1kB\\")]))
        .unwrap();
    assert!(t.started, "{t:?}");
    let err = s
        .try_start(&vals(&[("application_name", "x\nshared_buffers = 1kB")]))
        .expect_err("a line break is refused");
    assert!(err.to_string().contains("application_name"), "{err}");
}
