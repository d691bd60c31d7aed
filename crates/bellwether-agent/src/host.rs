//! The real [`Collector`]: reads the host (or a mounted root) with `bellwether-drift`, probes
//! the declared dependencies, and turns the profile's metrics into samples.
//!
//! Collection reads files and makes TCP connects, which block; it runs on tokio's blocking
//! pool so that the send loop and the shutdown signal stay responsive.

use std::path::PathBuf;
use std::time::Duration;

use bellwether_drift::deps::merge_dependencies;
use bellwether_drift::{read_declared_dependencies, CollectOptions, CpuSampler, Dependency};
use bellwether_model::{HostProfile, MetricSample};
use tracing::warn;

use crate::agent::{Collected, Collector};

pub struct HostCollector {
    rootfs: PathBuf,
    /// Dependencies from the command line; they override the root's declared ones by name.
    flag_dependencies: Vec<Dependency>,
    probe_timeout: Duration,
    sampler: Option<CpuSampler>,
    /// The last problem reading the declared dependencies, so it is logged once per change.
    last_dependency_error: Option<String>,
    scrape: Option<Scraper>,
    /// Files whose content hash every profile records (`--watch-file` and `--protect`).
    watch_files: Vec<String>,
}

/// Scrapes a service's Prometheus endpoint every collection (see [`crate::scrape`]).
struct Scraper {
    url: reqwest::Url,
    client: reqwest::Client,
    rates: crate::scrape::Rates,
    last_error: Option<String>,
}

impl HostCollector {
    pub fn new(
        rootfs: PathBuf,
        flag_dependencies: Vec<Dependency>,
        probe_timeout: Duration,
    ) -> Self {
        HostCollector {
            rootfs,
            flag_dependencies,
            probe_timeout,
            sampler: Some(CpuSampler::new()),
            last_dependency_error: None,
            scrape: None,
            watch_files: Vec::new(),
        }
    }

    /// Also record the SHA-256 and size of these files (relative to the root) in every
    /// profile, besides those the root lists in `etc/bellwether/watch-files`, so that drift
    /// shows a `file:PATH` finding when one changes.
    pub fn with_watch_files(mut self, paths: Vec<String>) -> Self {
        self.watch_files = paths;
        self
    }

    /// Also scrape `url` (a Prometheus text endpoint) every collection, and add the service
    /// samples `svc_requests_rate`, `svc_error_ratio`, `svc_latency_p50_ms` and
    /// `svc_latency_p99_ms`.
    pub fn with_scrape(mut self, url: reqwest::Url) -> Self {
        let client = reqwest::Client::builder()
            .timeout(self.probe_timeout)
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_default();
        self.scrape = Some(Scraper {
            url,
            client,
            rates: crate::scrape::Rates::default(),
            last_error: None,
        });
        self
    }
}

impl Scraper {
    async fn scrape(&mut self, ts_ms: i64) -> Vec<MetricSample> {
        let result = async {
            let resp = self
                .client
                .get(self.url.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            let text = resp.text().await.map_err(|e| e.to_string())?;
            let samples = crate::scrape::parse(&text).map_err(|e| e.to_string())?;
            crate::scrape::snapshot(&samples, ts_ms)
                .ok_or_else(|| "no websvc_requests_total in the scrape".to_string())
        }
        .await;
        match result {
            Ok(snap) => {
                if self.last_error.take().is_some() {
                    tracing::info!(url = %self.url, "Scraping the service works again.");
                }
                self.rates.push(snap)
            }
            Err(e) => {
                if self.last_error.as_ref() != Some(&e) {
                    warn!(url = %self.url, error = %e, "Could not scrape the service.");
                    self.last_error = Some(e);
                }
                // No data is no data: the window restarts at the next good scrape.
                self.rates = crate::scrape::Rates::default();
                Vec::new()
            }
        }
    }
}

/// One sample per metric of the profile, stamped with the collection time.
pub fn samples_of(profile: &HostProfile) -> Vec<MetricSample> {
    profile
        .metrics
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(name, value)| MetricSample {
            ts_ms: profile.collected_at_ms,
            name: name.clone(),
            value: *value,
        })
        .collect()
}

impl Collector for HostCollector {
    async fn collect(&mut self) -> Collected {
        let rootfs = self.rootfs.clone();
        let flags = self.flag_dependencies.clone();
        let timeout = self.probe_timeout;
        let watch_files = self.watch_files.clone();
        let mut sampler = self.sampler.take().unwrap_or_default();
        let job = tokio::task::spawn_blocking(move || {
            let (declared, problem) = match read_declared_dependencies(&rootfs) {
                Ok(d) => (d, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let opts = CollectOptions {
                dependencies: merge_dependencies(&[&declared, &flags]),
                probe_timeout: timeout,
                watch_files,
                ..CollectOptions::default()
            };
            let mut profile = sampler.collect(&rootfs, &opts);
            if let Some(p) = &problem {
                profile
                    .notes
                    .push(format!("declared dependencies not read: {p}"));
            }
            (sampler, profile, problem)
        });
        let (profile, problem) = match job.await {
            Ok((sampler, profile, problem)) => {
                self.sampler = Some(sampler);
                (profile, problem)
            }
            Err(e) => {
                // Collection is written never to panic; if it did, report an empty profile with
                // the reason rather than take the agent down.
                let profile = HostProfile {
                    notes: vec![format!("collection failed: {e}")],
                    ..HostProfile::default()
                };
                (profile, Some(format!("collection failed: {e}")))
            }
        };
        if problem != self.last_dependency_error {
            if let Some(p) = &problem {
                warn!(rootfs = %self.rootfs.display(), error = %p, "Could not read the declared dependencies.");
            }
            self.last_dependency_error = problem;
        }
        let mut samples = samples_of(&profile);
        if let Some(scraper) = &mut self.scrape {
            samples.extend(scraper.scrape(profile.collected_at_ms).await);
        }
        Collected { profile, samples }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bellwether_drift::synth::{write_host_root, HostSpec};

    #[tokio::test]
    async fn collects_a_synthetic_root_with_declared_and_flag_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = HostSpec::generate(3, "db-01", 80);
        spec.dependencies = vec![
            ("storage".into(), "127.0.0.1:1".into()),
            ("db".into(), "127.0.0.1:2".into()),
        ];
        write_host_root(dir.path(), &spec).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let flag =
            bellwether_drift::parse_dependency(&format!("db={}", listener.local_addr().unwrap()))
                .unwrap();
        let mut c = HostCollector::new(dir.path().to_owned(), vec![flag], Duration::from_secs(1));
        let Collected { profile, samples } = c.collect().await;
        assert_eq!(profile.hostname.as_deref(), Some("db-01"));
        assert_eq!(profile.packages.as_ref().map(|p| p.len()), Some(80));
        let deps: Vec<(&str, bool)> = profile
            .dependencies
            .iter()
            .map(|d| (d.name.as_str(), d.reachable))
            .collect();
        assert_eq!(
            deps,
            vec![("db", true), ("storage", false)],
            "the flag overrides the file by name"
        );
        assert_eq!(samples.len(), profile.metrics.len());
        assert!(samples
            .iter()
            .any(|s| s.name == "load1" && s.ts_ms == profile.collected_at_ms));
    }

    #[tokio::test]
    async fn watched_files_are_in_every_profile_and_a_change_is_news() {
        let dir = tempfile::tempdir().unwrap();
        write_host_root(dir.path(), &HostSpec::generate(5, "web-03", 20)).unwrap();
        std::fs::write(dir.path().join("etc/websvc.conf"), "workers = 4\n").unwrap();
        let mut c = HostCollector::new(dir.path().to_owned(), vec![], Duration::from_millis(100))
            .with_watch_files(vec!["etc/websvc.conf".into()]);
        let first = c.collect().await.profile;
        assert_eq!(first.files["etc/websvc.conf"].size, Some(12));
        let mut changes = crate::change::ChangeDetector::default();
        changes.mark_sent(&first);
        assert!(!changes.is_news(&c.collect().await.profile));
        std::fs::write(dir.path().join("etc/websvc.conf"), "workers = 0\n").unwrap();
        let edited = c.collect().await.profile;
        assert_ne!(
            edited.files["etc/websvc.conf"].sha256,
            first.files["etc/websvc.conf"].sha256
        );
        assert!(changes.is_news(&edited), "an edited watched file is sent");
    }

    #[tokio::test]
    async fn a_bad_dependencies_file_becomes_a_note() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/bellwether")).unwrap();
        std::fs::write(dir.path().join("etc/bellwether/dependencies"), "db=nope\n").unwrap();
        let mut c = HostCollector::new(dir.path().to_owned(), vec![], Duration::from_millis(100));
        let Collected { profile, .. } = c.collect().await;
        assert!(
            profile
                .notes
                .iter()
                .any(|n| n.contains("etc/bellwether/dependencies:1")),
            "{:?}",
            profile.notes
        );
    }
}
