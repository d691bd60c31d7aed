use bellwether_model::HostName;

use super::synthetic::*;
use super::*;
use crate::rollout::plan::parse_plan;

fn hn(s: &str) -> HostName {
    HostName::new(s).unwrap()
}

const S: i64 = 1000;

#[test]
fn a_fault_is_detected_within_three_intervals_of_its_onset() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut worst = 0;
    for seed in 0..40 {
        let onset = 5 + (seed as i64 % 15);
        for fault in [Fault::ErrorRate(0.3), Fault::LatencyFactor(4.0)] {
            let (at, v) = scenario(&plan, seed, 40, fault, onset).expect("the fault is detected");
            let reaction = at - onset * S;
            assert!(
                reaction >= 0,
                "seed {seed}: a verdict before the onset: {v:?}"
            );
            assert!(
                reaction <= 3 * S,
                "seed {seed}: detected {reaction}ms after the onset: {v:?}"
            );
            assert!(matches!(v, WatchVerdict::Failing { .. }), "{v:?}");
            worst = worst.max(reaction);
        }
    }
    assert!(worst <= 3 * S);
}

#[test]
fn the_failing_verdict_names_the_metric_with_its_figures() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let (_, v) = scenario(&plan, 7, 30, Fault::ErrorRate(0.3), 5).unwrap();
    let WatchVerdict::Failing { reason, figures } = v else {
        panic!("not failing")
    };
    assert!(reason.contains("svc_error_ratio"), "{reason}");
    assert_eq!(figures["reasons"][0]["metric"], "svc_error_ratio");
    assert!(figures["reasons"][0]["for_ms"].as_i64().unwrap() >= 3000);
    assert!(figures["severity"].as_f64().unwrap() >= 0.3);
}

#[test]
fn healthy_noise_does_not_fail_hosts() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    // A short version of the measurement in `bench rollout-engine` (1,000 runs, release).
    let (failed, runs) = false_failure_rate(&plan, 50, 20);
    assert!(
        failed * 100 <= runs as usize,
        "{failed} of {runs} healthy hosts failed"
    );
}

#[test]
fn silence_is_no_data_and_never_failing() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut run = Run::new(&plan, 1, 2);
    for t in 0..40 {
        run.feed(t * S, Fault::None);
    }
    run.canary.mark_applied(40 * S);
    run.feed(41 * S, Fault::None);
    assert_eq!(run.verdict(45 * S), WatchVerdict::Healthy);
    assert_eq!(
        run.verdict(47 * S),
        WatchVerdict::NoData {
            since_ms: 41 * S,
            missing: None
        }
    );
    // A host that sent nothing since its apply.
    let mut w = HostWatcher::new(&plan, hn("quiet")).unwrap();
    w.mark_applied(0);
    assert_eq!(w.verdict(5 * S, &[]), WatchVerdict::Healthy);
    assert_eq!(
        w.verdict(6 * S, &[]),
        WatchVerdict::NoData {
            since_ms: 0,
            missing: None
        }
    );
}

#[test]
fn a_critical_metric_gives_a_critical_verdict() {
    let plan = parse_plan(
        &WATCH_PLAN.replace(
            "weight: 1.0, floor: 0.01",
            "weight: 1.0, floor: 0.01, critical: true",
        ),
        "p.yaml",
    )
    .unwrap();
    let (_, v) = scenario(&plan, 3, 30, Fault::ErrorRate(0.5), 3).unwrap();
    assert!(matches!(v, WatchVerdict::Critical { .. }), "{v:?}");
}

#[test]
fn a_drift_rise_above_the_limit_fails() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut run = Run::new(&plan, 2, 0);
    for t in 0..40 {
        run.feed(t * S, Fault::None);
    }
    run.canary.observe_drift(39 * S, 0.1);
    run.canary.mark_applied(40 * S);
    run.feed(41 * S, Fault::None);
    run.canary.observe_drift(41 * S, 0.3);
    assert_eq!(run.verdict(41 * S), WatchVerdict::Healthy);
    // One odd profile (a probe that timed out once) is not a failure.
    run.canary.observe_drift(42 * S, 0.95);
    run.feed(42 * S, Fault::None);
    assert_eq!(run.verdict(42 * S), WatchVerdict::Healthy);
    run.canary.observe_drift(43 * S, 0.1);
    // A rise that lasts `drift_rise_for` (5 s by default) is.
    for t in 44..=49 {
        run.canary.observe_drift(t * S, 0.45);
        run.feed(t * S, Fault::None);
        if t < 49 {
            assert_eq!(run.verdict(t * S), WatchVerdict::Healthy, "at {t} s");
        }
    }
    let v = run.verdict(49 * S);
    let WatchVerdict::Failing { reason, figures } = v else {
        panic!("{v:?}")
    };
    assert!(reason.contains("drift rose by 0.350"), "{reason}");
    assert_eq!(figures["drift_rise_limit"], 0.3);
    assert_eq!(figures["for_ms"], 5000);
}

#[test]
fn the_canary_judge_catches_a_shift_the_baseline_band_lets_through() {
    // A 70 % latency rise stays inside the 100 % band, and the band's 60 s duration would wait
    // anyway; the judge compares with the controls over the same window and fails it.
    let text = WATCH_PLAN
        .replace(
            "threshold_pct: 100, for: 3s",
            "threshold_pct: 100, for: 60s",
        )
        .replace("marginal: 50, pass: 75", "marginal: 60, pass: 75");
    let plan = parse_plan(&text, "p.yaml").unwrap();
    let (at, v) = scenario(&plan, 5, 40, Fault::LatencyFactor(1.7), 1).expect("the judge fails it");
    let WatchVerdict::Failing { reason, figures } = v else {
        panic!("{v:?}")
    };
    assert!(reason.contains("canary judge"), "{reason}");
    assert_eq!(figures["metrics"][0]["metric"], "svc_latency_p99_ms");
    assert!(at >= 5 * S, "the judge waits for min_samples");
    // Without controls the judge has no opinion and the host stays healthy.
    let mut run = Run::new(&plan, 5, 0);
    for t in 0..40 {
        run.feed(t * S, Fault::None);
    }
    run.canary.mark_applied(40 * S);
    for s in 1..=20 {
        run.feed(40 * S + s * S, Fault::LatencyFactor(1.7));
    }
    assert_eq!(run.verdict(60 * S), WatchVerdict::Healthy);
}

#[test]
fn bad_samples_are_refused_with_the_host_and_metric() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut w = HostWatcher::new(&plan, hn("h1")).unwrap();
    let e = w.observe(0, "cpu", 1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "host h1: metric cpu is not in the plan's analysis"
    );
    w.observe(10, "svc_error_ratio", 0.01).unwrap();
    let e = w.observe(10, "svc_error_ratio", 0.01).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("host h1: metric svc_error_ratio: timestamp 10 ms"),
        "{e}"
    );
    // NaN is no data, not an error.
    w.observe(20, "svc_error_ratio", f64::NAN).unwrap();
}

#[test]
fn a_restored_watcher_keeps_the_frozen_baseline() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut run = Run::new(&plan, 11, 0);
    for t in 0..40 {
        run.feed(t * S, Fault::None);
    }
    run.canary.mark_applied(40 * S);
    let snap = run.canary.snapshot();
    assert_eq!(snap.applied_ms, Some(40 * S));
    assert_eq!(snap.baselines.len(), 2);
    let json = serde_json::to_string(&snap).unwrap();
    let back: WatcherSnapshot = serde_json::from_str(&json).unwrap();
    let mut w = HostWatcher::restore(&plan, &back).unwrap();
    assert_eq!(w.applied_ms(), Some(40 * S));
    // The fault right after the restart is judged against the old baseline: detected after
    // `for` (3 s) as before: samples at 41, 42 and 43 s, each standing for the second it closes.
    let mut first = None;
    for s in 41..60 {
        w.observe(s * S, "svc_error_ratio", 0.3).unwrap();
        w.observe(s * S, "svc_latency_p99_ms", 50.0).unwrap();
        if first.is_none() && matches!(w.verdict(s * S, &[]), WatchVerdict::Failing { .. }) {
            first = Some(s);
        }
    }
    assert_eq!(
        first,
        Some(43),
        "the third breaching sample witnesses 3 s of breach"
    );
    // A host not applied yet has nothing frozen to keep.
    let fresh = HostWatcher::new(&plan, HostName::new("x").unwrap()).unwrap();
    assert!(fresh.snapshot().baselines.is_empty());
}

#[test]
fn a_restart_after_a_remediation_forgets_the_breach_but_keeps_the_baseline() {
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut w = HostWatcher::new(&plan, hn("h")).unwrap();
    for t in 0..40 {
        w.observe(t * S, "svc_error_ratio", 0.01).unwrap();
        w.observe(t * S, "svc_latency_p99_ms", 50.0).unwrap();
    }
    w.mark_applied(40 * S);
    for t in 41..=45 {
        w.observe(t * S, "svc_error_ratio", 0.3).unwrap();
        w.observe(t * S, "svc_latency_p99_ms", 50.0).unwrap();
    }
    assert!(matches!(
        w.verdict(45 * S, &[]),
        WatchVerdict::Failing { .. }
    ));
    // Remediated at 46 s: the old breach no longer counts, nor does the sample at 47 s whose
    // window straddles the restore (still bad).
    w.restart(46 * S).unwrap();
    w.observe(47 * S, "svc_error_ratio", 0.2).unwrap();
    assert_eq!(w.verdict(47 * S, &[]), WatchVerdict::Healthy);
    for t in 48..=55 {
        w.observe(t * S, "svc_error_ratio", 0.01).unwrap();
        w.observe(t * S, "svc_latency_p99_ms", 50.0).unwrap();
        assert_eq!(w.verdict(t * S, &[]), WatchVerdict::Healthy, "at {t} s");
    }
    assert_eq!(w.last_sample_ms(), Some(55 * S));
    // The baseline is still the pre-apply one: a new breach fails the host again.
    for t in 56..=60 {
        w.observe(t * S, "svc_error_ratio", 0.3).unwrap();
        w.observe(t * S, "svc_latency_p99_ms", 50.0).unwrap();
    }
    assert!(matches!(
        w.verdict(60 * S, &[]),
        WatchVerdict::Failing { .. }
    ));
}

/// The host's samples: 40 s healthy, then bad (0.3) from the apply at 40 s until `until` s.
fn feed_fault(w: &mut HostWatcher, from: i64, until: i64) {
    for t in from..=until {
        let err = if t >= 40 { 0.3 } else { 0.01 };
        w.observe(t * S, "svc_error_ratio", err).unwrap();
        w.observe(t * S, "svc_latency_p99_ms", 50.0).unwrap();
    }
}

#[test]
fn an_apply_learnt_late_freezes_the_baseline_from_before_it_finished() {
    // The server learns that the apply finished at 40 s only when it consumes the result,
    // maybe much later; meanwhile the host's bad samples from 40 s on were fed. They are after
    // the apply: they must not become the baseline they are judged against.
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut w = HostWatcher::new(&plan, hn("late")).unwrap();
    feed_fault(&mut w, 0, 75);
    assert!(
        w.mark_applied(40 * S).is_empty(),
        "40 s of healthy samples warmed up"
    );
    let base = w.snapshot().baselines["svc_error_ratio"];
    assert!((base - 0.01).abs() < 1e-9, "baseline {base}");
    let v = w.verdict(75 * S, &[]);
    let WatchVerdict::Failing { reason, .. } = &v else {
        panic!("the breach since 40 s is missed: {v:?}")
    };
    assert!(reason.contains("svc_error_ratio"), "{reason}");
    feed_fault(&mut w, 76, 78);
    assert!(matches!(
        w.verdict(78 * S, &[]),
        WatchVerdict::Failing { .. }
    ));
}

#[test]
fn the_verdict_does_not_depend_on_when_the_apply_is_learnt() {
    // The apply finished at 40 s; the watcher learns it at 38 s (before), 41, 42, 43 or 50 s
    // (after samples from after it): the same baseline and the same verdict every second.
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let run = |learnt: i64| {
        let mut w = HostWatcher::new(&plan, hn("h")).unwrap();
        let mut verdicts = Vec::new();
        for t in 0..=55 {
            if t == learnt {
                w.mark_applied(40 * S);
            }
            feed_fault(&mut w, t, t);
            if t >= learnt.max(40) {
                verdicts.push((t, w.verdict(t * S, &[])));
            }
        }
        (w.snapshot(), verdicts)
    };
    let (in_time, verdicts) = run(40);
    assert!(matches!(
        verdicts.last().unwrap().1,
        WatchVerdict::Failing { .. }
    ));
    for learnt in [38, 41, 42, 43, 50] {
        let (snap, late) = run(learnt);
        assert_eq!(snap, in_time, "learnt at {learnt} s");
        let tail: Vec<_> = verdicts
            .iter()
            .filter(|(t, _)| *t >= learnt)
            .cloned()
            .collect();
        assert_eq!(late, tail, "learnt at {learnt} s");
    }
}

#[test]
fn a_restored_watcher_ignores_samples_from_before_the_apply() {
    // It has the frozen baselines, not the samples behind them: a late pre-apply sample joins
    // nothing and is not judged; the baseline stays the snapshot's.
    let plan = parse_plan(WATCH_PLAN, "p.yaml").unwrap();
    let mut w = HostWatcher::new(&plan, hn("h")).unwrap();
    feed_fault(&mut w, 0, 39);
    w.mark_applied(40 * S);
    let snap = w.snapshot();
    let mut r = HostWatcher::restore(&plan, &snap).unwrap();
    for t in 30..=39 {
        r.observe(t * S, "svc_error_ratio", 0.3).unwrap();
    }
    assert!(r.observe(39 * S, "svc_error_ratio", 0.3).is_err());
    assert_eq!(r.snapshot(), snap);
    assert_eq!(r.verdict(39 * S, &[]), WatchVerdict::Healthy);
    feed_fault(&mut r, 40, 43);
    assert!(matches!(
        r.verdict(43 * S, &[]),
        WatchVerdict::Failing { .. }
    ));
}

const PROM_PLAN: &str = r#"name: p
update: { name: websvc, version: 2, apply: { argv: [/bin/true] }, revert: { argv: [/bin/true] } }
analysis:
  interval: 1s
  baseline: 4s
  judge: { enabled: false }
  metrics:
    - { name: svc_latency_p50_ms, threshold_pct: 100 }
    - name: error_ratio
      source: prometheus
      query: 'sum(rate(errors{host="{{host}}"}[5s]))'
      threshold_pct: 50
      floor: 0.02
      for: 2s
no_data: { after: 3s }
"#;

#[test]
fn a_prometheus_metric_without_values_is_no_data_even_while_the_agent_reports() {
    let plan = parse_plan(PROM_PLAN, "p.yaml").unwrap();
    let mut w = HostWatcher::new(&plan, hn("web-01")).unwrap();
    for t in 0..6 {
        w.observe(t * S, "svc_latency_p50_ms", 3.0).unwrap();
        w.observe(t * S, "error_ratio", 0.0).unwrap();
    }
    w.mark_applied(6 * S);
    assert_eq!(w.data_ms(), Some(5 * S));
    // The agent keeps reporting; Prometheus gives nothing from the apply on.
    let q = r#"sum(rate(errors{host="web-01"}[5s]))"#;
    for t in 6..12 {
        w.observe(t * S, "svc_latency_p50_ms", 3.0).unwrap();
        w.observe_missing("error_ratio", q, "the query returned no series")
            .unwrap();
        if t <= 9 {
            assert_eq!(w.verdict(t * S, &[]), WatchVerdict::Healthy, "t={t}");
        }
    }
    // The host's data stops at the Prometheus metric's last value: no bake end is reached.
    assert_eq!(w.data_ms(), Some(5 * S));
    assert_eq!(
        w.verdict(11 * S, &[]),
        WatchVerdict::NoData {
            since_ms: 6 * S,
            missing: Some(MissingData {
                metric: "error_ratio".into(),
                query: q.into(),
                problem: "the query returned no series".into(),
            }),
        }
    );
    // A value clears the problem; its breach is judged like an agent's sample.
    for t in 12..16 {
        w.observe(t * S, "svc_latency_p50_ms", 3.0).unwrap();
        w.observe(t * S, "error_ratio", 0.5).unwrap();
    }
    assert_eq!(w.data_ms(), Some(15 * S));
    let v = w.verdict(15 * S, &[]);
    let WatchVerdict::Failing { reason, .. } = &v else {
        panic!("{v:?}")
    };
    assert!(reason.contains("error_ratio"), "{reason}");
    assert!(w
        .observe_missing("nope", q, "x")
        .unwrap_err()
        .to_string()
        .contains("not in the plan's analysis"));
}

#[test]
fn a_prometheus_metric_that_never_had_a_value_is_no_data_after_the_apply() {
    let plan = parse_plan(PROM_PLAN, "p.yaml").unwrap();
    let mut w = HostWatcher::new(&plan, hn("web-01")).unwrap();
    for t in 0..6 {
        w.observe(t * S, "svc_latency_p50_ms", 3.0).unwrap();
    }
    assert_eq!(w.data_ms(), None, "no Prometheus value yet");
    w.mark_applied(6 * S);
    for t in 6..10 {
        w.observe(t * S, "svc_latency_p50_ms", 3.0).unwrap();
    }
    let WatchVerdict::NoData { since_ms, missing } = w.verdict(10 * S, &[]) else {
        panic!("not no data")
    };
    assert_eq!(since_ms, 6 * S);
    let m = missing.unwrap();
    assert_eq!(m.metric, "error_ratio");
    assert_eq!(m.query, r#"sum(rate(errors{host="{{host}}"}[5s]))"#);
    assert_eq!(m.problem, "no value was read");
}

#[test]
fn a_host_with_only_prometheus_metrics_and_no_values_names_the_query() {
    // Only the Prometheus metric: no agent sample counts, so every check sees silence; the
    // verdict still says which query gave nothing and why.
    let plan = parse_plan(
        &PROM_PLAN.replace(
            "    - { name: svc_latency_p50_ms, threshold_pct: 100 }\n",
            "",
        ),
        "p.yaml",
    )
    .unwrap();
    assert_eq!(plan.analysis.metrics.len(), 1);
    let mut w = HostWatcher::new(&plan, hn("web-01")).unwrap();
    w.mark_applied(0);
    w.observe_missing("error_ratio", "q1", "Prometheus at http://p did not answer")
        .unwrap();
    let WatchVerdict::NoData { since_ms, missing } = w.verdict(4 * S, &[]) else {
        panic!("not no data")
    };
    assert_eq!(since_ms, 0);
    assert_eq!(
        missing,
        Some(MissingData {
            metric: "error_ratio".into(),
            query: "q1".into(),
            problem: "Prometheus at http://p did not answer".into(),
        })
    );
}
