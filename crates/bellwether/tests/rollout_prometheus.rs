//! Prometheus as a metric source, end to end with real processes: a sandbox fleet whose web
//! services a real Prometheus (Debian's `prometheus`, started by the test on a free port)
//! scrapes, and rollouts whose analysis reads a PromQL error ratio templated with each host's
//! name and label.
//!
//! - version 2 is healthy on three hosts and fails half of the requests of `bad-01` (a fault
//!   the model cannot know): the three are promoted, `bad-01` is rolled back on the PromQL
//!   metric out of its band, and the rollout completes;
//! - a query that matches no series is no data: the rollout pauses naming the host and the
//!   query, and no wave is ever promoted;
//! - the templating's escaping holds against the real PromQL parser: a label value written to
//!   break out of its matcher matches nothing, and a host name after `=~` is a literal.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bellwether_engine::rollout::promql::QueryTemplate;
use support::*;

/// Four web hosts alike; version 2 fails half the requests of the `bad` group. The fault is
/// not in the history (`in_history: false`), so the model rates all four alike and the pilot
/// may take any of them; the version-9 rule only gives the history some failures to learn.
const SCENARIO: &str = r#"
seed: 5
groups:
  - { name: web, count: 3, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: bad, count: 1, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
faults:
  - { when: { version: "2", group: bad }, effect: { error_rate: 0.5 }, in_history: false }
  - { when: { version: "9" }, effect: { error_rate: 0.5 } }
history: { deployments: 100, seed: 1 }
"#;

/// The error ratio of one host's service over 3 s, from the counters Prometheus scraped.
const ERROR_RATIO: &str = r#"sum(rate(websvc_errors_total{host="{{host}}", role="{{labels.role}}"}[3s])) / sum(rate(websvc_requests_total{host="{{host}}", role="{{labels.role}}"}[3s]))"#;

fn plan(version: &str, prometheus: &str, query: &str) -> String {
    format!(
        r#"name: web-v{version}-prom
update:
  name: websvc
  version: "{version}"
  apply:  {{ builtin: set_service_version, version: "{version}" }}
  revert: {{ builtin: set_service_version, version: "1" }}
targets:
  labels: {{ role: web }}
risk: {{ pilot: {{ min: 2, max: 2 }} }}
waves: {{ fixed: [50, 100] }}
bake: 5s
analysis:
  interval: 1s
  baseline: 5s
  prometheus: {{ address: "{prometheus}", timeout: 2s }}
  metrics:
    - name: error_ratio
      source: prometheus
      query: '{query}'
      threshold_pct: 50
      floor: 0.05
      for: 2s
  judge: {{ enabled: false }}
rollback:
  pause_when: {{ hosts: 3 }}
no_data: {{ after: 5s }}
"#
    )
}

/// A `prometheus` process of the test's own, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    bellwether_pg::listen_port().expect("finding a free port on 127.0.0.1")
}

/// Starts Prometheus scraping each `(host, service address)` every second, with the host's
/// name and role as target labels.
fn start_prometheus(dir: &Path, targets: &[(String, String)]) -> Prometheus {
    let have = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !have.is_ok_and(|s| s.success()) {
        panic!(
            "`prometheus` is not on the PATH; these tests run a real one. install it: apt-get install -y prometheus"
        );
    }
    let mut config = String::from(
        "global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }\nscrape_configs:\n  - job_name: websvc\n    static_configs:\n",
    );
    for (host, addr) in targets {
        config.push_str(&format!(
            "      - {{ targets: [\"{addr}\"], labels: {{ host: \"{host}\", role: web }} }}\n"
        ));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let data = dir.join("prometheus-data");
    let port = free_port();
    let log = dir.join("prometheus.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start prometheus: {e}"));
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

impl Prometheus {
    /// An instant query through the HTTP API: the answer's JSON.
    async fn query(&self, client: &reqwest::Client, q: &str) -> serde_json::Value {
        client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits for `/-/ready`, then until every target has been scraped `span` times (both
    /// polled through the HTTP API, with deadlines).
    async fn wait_for_scrapes(&mut self, client: &reqwest::Client, hosts: usize, span: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let ready = format!("{}/-/ready", self.url);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let r = client.get(&ready).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus was not ready within 60s; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let q = format!(r#"count(count_over_time(up{{job="websvc"}}[30s]) >= {span})"#);
        loop {
            let v = self.query(client, &q).await;
            let n = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|n| n.parse::<usize>().ok());
            if n == Some(hosts) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{span} scrapes of each of the {hosts} services never came: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn events_of<'a>(r: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn rollouts_judge_hosts_on_promql_metrics_and_pause_on_no_data() {
    let _turn = one_sandbox_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = sandbox_up_with(tmp.path(), SCENARIO);
    let _down = Down(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();

    // Each host's service address, from the sandbox's status.
    let status = run(&[
        "sandbox",
        "status",
        "--dir",
        dir.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_ok("sandbox status", &status);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let targets: Vec<(String, String)> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["service_addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(targets.len(), 4, "{v}");
    let mut prom = start_prometheus(tmp.path(), &targets);
    rt.block_on(prom.wait_for_scrapes(&http, targets.len(), 8));

    // The escaping, against the real parser: a value that tries to leave its matcher stays
    // a value (the query parses and matches nothing)…
    let t = QueryTemplate::parse(r#"up{job="websvc", host="{{labels.evil}}"}"#).unwrap();
    let evil = r#"web-01"} or vector(1) or up{host=""#;
    let labels = [("evil".to_string(), evil.to_string())]
        .into_iter()
        .collect();
    let q = t.render("web-01", &labels, 1000).unwrap();
    let a = rt.block_on(prom.query(&http, &q));
    assert_eq!(a["status"], "success", "{q}: {a}");
    assert_eq!(a["data"]["result"], serde_json::json!([]), "{q}: {a}");
    // …the same query with the real name matches the host's one series…
    let labels = [("evil".to_string(), "web-01".to_string())]
        .into_iter()
        .collect();
    let a = rt.block_on(prom.query(&http, &t.render("web-01", &labels, 1000).unwrap()));
    assert_eq!(a["data"]["result"].as_array().unwrap().len(), 1, "{a}");
    // …and after =~ a host name is a literal: `web.01` does not match `web-01`, as the
    // unescaped pattern would.
    let t = QueryTemplate::parse(r#"up{job="websvc", host=~"{{host}}"}"#).unwrap();
    let q = t.render("web.01", &Default::default(), 1000).unwrap();
    let a = rt.block_on(prom.query(&http, &q));
    assert_eq!(a["status"], "success", "{q}: {a}");
    assert_eq!(a["data"]["result"], serde_json::json!([]), "{q}: {a}");
    let a = rt.block_on(prom.query(&http, r#"up{job="websvc", host=~"web.01"}"#));
    assert_eq!(a["data"]["result"].as_array().unwrap().len(), 1, "{a}");

    // Version 2: the healthy hosts are promoted, bad-01 is rolled back on the PromQL metric.
    let path = tmp.path().join("v2.yaml");
    std::fs::write(&path, plan("2", &prom.url, ERROR_RATIO)).unwrap();
    let (_, r) = rollout_to_report(&dir, &path);
    assert_eq!(
        r["state"], "completed",
        "paused for {}\n{r}",
        r["pause_reason"]
    );
    for h in r["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        let version =
            std::fs::read_to_string(dir.join("hosts").join(name).join("etc/websvc/version"))
                .unwrap();
        if name == "bad-01" {
            assert_eq!(h["action"], "rolled_back", "{h}");
            assert_eq!(h["state"], "rolled_back", "{h}");
            assert_eq!(version, "1\n");
        } else {
            assert_eq!(h["action"], "updated", "{h}");
            assert_eq!(h["state"], "updated", "{h}");
            assert_eq!(version, "2\n", "{name}");
        }
    }
    let failed = events_of(&r, "host.failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["host"], "bad-01");
    let fig = &failed[0]["figures"]["reasons"][0];
    assert_eq!(fig["metric"], "error_ratio", "{}", failed[0]);
    assert!(
        fig["value"].as_f64().unwrap() > 0.2,
        "about half of bad-01's requests fail: {}",
        failed[0]
    );
    assert!(events_of(&r, "wave.passed").len() >= 2, "{r}");

    // Version 3 with a query that matches no series: no data, a pause naming host and
    // query, and nothing promoted.
    let nothing = r#"sum(rate(websvc_errors_total{host="{{host}}", job="nonexistent"}[3s]))"#;
    let path = tmp.path().join("v3.yaml");
    std::fs::write(&path, plan("3", &prom.url, nothing)).unwrap();
    let (id, r) = rollout_to_report(&dir, &path);
    assert_eq!(r["state"], "paused", "{r}");
    let pause = &r["pause"];
    assert_eq!(pause["kind"], "no_data", "{r}");
    let host = pause["host"].as_str().unwrap();
    let query = pause["missing"]["query"].as_str().unwrap();
    assert_eq!(
        query,
        format!(r#"sum(rate(websvc_errors_total{{host="{host}", job="nonexistent"}}[3s]))"#)
    );
    assert_eq!(pause["missing"]["metric"], "error_ratio");
    assert_eq!(pause["missing"]["problem"], "the query returned no series");
    let reason = r["pause_reason"].as_str().unwrap();
    assert!(reason.contains(host) && reason.contains(query), "{reason}");
    let no_data = events_of(&r, "host.no_data");
    assert!(
        no_data
            .iter()
            .any(|e| e["host"] == host && e["figures"]["query"] == query),
        "{no_data:?}"
    );
    assert!(
        events_of(&r, "wave.passed").is_empty(),
        "no wave is promoted on no data: {r}"
    );
    assert!(
        events_of(&r, "host.failed").is_empty(),
        "no data fails no host: {r}"
    );
    // Still nothing promoted a while later: the pause holds (its hosts keep having no data).
    let status = sandbox_cli(&dir, &["rollout", "status", &id, "--output", "json"]);
    assert_ok("rollout status", &status);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["state"], "paused", "{s}");
    assert_eq!(s["wave"], 0, "{s}");
    assert_ok(
        "rollout abort",
        &sandbox_cli(&dir, &["rollout", "abort", &id]),
    );
}
