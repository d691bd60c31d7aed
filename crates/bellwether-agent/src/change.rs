//! Deciding whether a freshly collected profile is worth sending.
//!
//! The agent sends the profile at start and whenever the host's configuration changes; the
//! metrics travel as samples every interval instead. So two profiles are "the same" when they
//! differ only in when they were collected, in their metric values, or in dependency connect
//! latencies that stayed within the same power-of-two band: a probe that took 0.3 ms and then
//! 0.4 ms is not news, one that went from 0.4 ms to 40 ms is.

use bellwether_model::HostProfile;

/// The part of a profile whose change makes the agent resend it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileView(HostProfile);

impl ProfileView {
    pub fn of(profile: &HostProfile) -> Self {
        let mut p = HostProfile {
            collected_at_ms: 0,
            metrics: Default::default(),
            ..profile.clone()
        };
        for dep in &mut p.dependencies {
            dep.latency_ms = dep.latency_ms.map(|ms| latency_band(ms) as f64);
        }
        ProfileView(p)
    }
}

/// The power-of-two band a connect latency falls in: everything under 2 ms is band 0
/// (loopback and LAN noise), 2–4 ms band 1, 4–8 ms band 2, and so on.
pub fn latency_band(ms: f64) -> u32 {
    if !ms.is_finite() || ms < 2.0 {
        0
    } else {
        ms.log2().floor() as u32
    }
}

/// Remembers the last profile the server accepted and says whether a new one differs.
#[derive(Debug, Default)]
pub struct ChangeDetector {
    last_sent: Option<ProfileView>,
}

impl ChangeDetector {
    /// True when `profile` should be sent: nothing was sent yet, or its view changed.
    pub fn is_news(&self, profile: &HostProfile) -> bool {
        self.last_sent.as_ref() != Some(&ProfileView::of(profile))
    }

    /// Records that the server accepted (or definitively refused) `profile`.
    pub fn mark_sent(&mut self, profile: &HostProfile) {
        self.last_sent = Some(ProfileView::of(profile));
    }

    /// Forgets what was sent, so the next profile goes out whatever it is. Used after
    /// re-enrolment, when the server may have lost track of this host.
    pub fn forget(&mut self) {
        self.last_sent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bellwether_model::profile::DependencyStatus;

    fn profile() -> HostProfile {
        HostProfile {
            hostname: Some("web-01".into()),
            collected_at_ms: 1,
            packages: Some([("openssl".to_string(), "3.0.11".to_string())].into()),
            dependencies: vec![DependencyStatus {
                name: "db".into(),
                endpoint: "127.0.0.1:5432".into(),
                reachable: true,
                latency_ms: Some(0.3),
            }],
            metrics: [("load1".to_string(), 0.5)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_profile_is_news() {
        assert!(ChangeDetector::default().is_news(&profile()));
    }

    #[test]
    fn time_metrics_and_latency_noise_are_not_news() {
        let mut d = ChangeDetector::default();
        d.mark_sent(&profile());
        let mut p = profile();
        p.collected_at_ms = 99;
        p.metrics.insert("load1".into(), 7.0);
        p.metrics.insert("psi_cpu_some_avg10".into(), 1.0);
        p.dependencies[0].latency_ms = Some(1.7);
        assert!(!d.is_news(&p));
    }

    #[test]
    fn configuration_and_dependency_changes_are_news() {
        let mut d = ChangeDetector::default();
        d.mark_sent(&profile());

        let mut p = profile();
        p.packages
            .as_mut()
            .unwrap()
            .insert("openssl".into(), "3.1.0".into());
        assert!(d.is_news(&p));

        let mut p = profile();
        p.dependencies[0].reachable = false;
        p.dependencies[0].latency_ms = None;
        assert!(d.is_news(&p));

        let mut p = profile();
        p.dependencies[0].latency_ms = Some(40.0);
        assert!(d.is_news(&p));

        let mut p = profile();
        p.notes.push("etc/resolv.conf: not found".into());
        assert!(d.is_news(&p));
    }

    #[test]
    fn forget_makes_the_next_profile_news() {
        let mut d = ChangeDetector::default();
        d.mark_sent(&profile());
        d.forget();
        assert!(d.is_news(&profile()));
    }

    #[test]
    fn latency_bands() {
        assert_eq!(latency_band(0.05), 0);
        assert_eq!(latency_band(1.99), 0);
        assert_eq!(latency_band(2.0), 1);
        assert_eq!(latency_band(5.0), 2);
        assert_eq!(latency_band(1000.0), 9);
        assert_eq!(latency_band(f64::NAN), 0);
    }
}
