//! The mirror built-ins (`mirror_provision`, `mirror_retire`, `mirror_promote`,
//! `mirror_fence`): the agent runs its host's mirrors with `bellwether_mirror::LocalProcess`
//! under `STATE_DIR/mirrors/`, and promotes and fences on its loopback, where the mirrors
//! listen. The decisions are the server's; this module only carries them out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bellwether_mirror::{LocalProcess, ProvisionRequest, Provisioner};
use bellwether_model::ActionSpec;

/// Where this agent keeps its mirrors.
#[derive(Debug, Clone)]
pub struct Mirrors {
    base: PathBuf,
}

impl Mirrors {
    /// Mirrors under `STATE_DIR/mirrors/` (created on the first provisioning).
    pub fn new(state_dir: &Path) -> Mirrors {
        Mirrors {
            base: state_dir.join("mirrors"),
        }
    }

    /// The driver, waiting at most `timeout` for a new mirror to be caught up.
    fn driver(&self, timeout: Duration) -> LocalProcess {
        LocalProcess::new(&self.base).with_ready_timeout(timeout)
    }

    /// Carries out a mirror built-in; its structured output, or the error naming what failed.
    pub async fn run(
        &self,
        spec: &ActionSpec,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
        match spec {
            ActionSpec::MirrorProvision {
                dependency,
                kind,
                primary,
                instance,
                port,
                ..
            } => {
                let req = ProvisionRequest {
                    dependency: dependency.clone(),
                    kind: *kind,
                    primary: primary.clone(),
                    instance_id: instance.clone(),
                    port: *port,
                };
                let inst = self
                    .driver(timeout)
                    .provision(&req)
                    .await
                    .map_err(|e| e.to_string())?;
                json(serde_json::to_value(inst))
            }
            ActionSpec::MirrorRetire { instance, .. } => {
                let driver = self.driver(timeout);
                // No record: nothing of it is left (retired before, or never made).
                let found = match driver.load(instance) {
                    Ok(inst) => {
                        driver.retire(&inst).await.map_err(|e| e.to_string())?;
                        true
                    }
                    Err(_) if !self.base.join(instance).exists() => false,
                    Err(e) => return Err(e.to_string()),
                };
                Ok(serde_json::json!({"instance": instance, "retired": true, "found": found}))
            }
            ActionSpec::MirrorPromote {
                kind,
                endpoint,
                catch_up_to,
                ..
            } => {
                let r = bellwether_mirror::promote(*kind, endpoint, *catch_up_to, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                json(serde_json::to_value(r))
            }
            ActionSpec::MirrorFence {
                kind,
                endpoint,
                new_primary,
                ..
            } => {
                let r = bellwether_mirror::fence(*kind, endpoint, new_primary.as_deref(), timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                json(serde_json::to_value(r))
            }
            other => Err(format!("{} is not a mirror built-in", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use bellwether_mirror::testing::TestRedis;
    use bellwether_mirror::{probe, DepKind, Role};
    use bellwether_model::wire::ActionOutcome;
    use bellwether_model::ActionSpec;

    use crate::exec::{AllowList, Executor};

    fn executor(allow: &[&str]) -> (Executor, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let ex = Executor::new(
            dir.path().join("root"),
            &dir.path().join("state"),
            &[],
            None,
        )
        .unwrap()
        .with_allow_list(AllowList::parse(allow).unwrap());
        (ex, dir)
    }

    fn provision(primary: &str, instance: &str) -> ActionSpec {
        ActionSpec::MirrorProvision {
            dependency: "cache".into(),
            kind: DepKind::Redis,
            primary: primary.into(),
            instance: instance.into(),
            port: None,
            timeout_ms: Some(30_000),
        }
    }

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_agent_provisions_promotes_fences_and_retires_a_redis_mirror() {
        let primary = TestRedis::start();
        let (ex, dir) = executor(&[
            "mirror_provision",
            "mirror_retire",
            "mirror_promote",
            "mirror_fence",
        ]);
        let r = ex.run(&provision(&primary.endpoint(), "cache-1")).await;
        assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
        let out = r.output.unwrap();
        let endpoint = out["endpoint"].as_str().unwrap().to_string();
        let mirror_dir = dir.path().join("state/mirrors/cache-1");
        assert_eq!(out["dir"].as_str().unwrap(), mirror_dir.to_str().unwrap());
        assert!(mirror_dir.join("instance.json").is_file());
        let st = probe(DepKind::Redis, &endpoint, T).await.unwrap();
        assert_eq!(st.role, Some(Role::Replica));
        assert_eq!(st.link_up, Some(true));

        // The same id again is a failure naming it; the first mirror is untouched.
        let r = ex.run(&provision(&primary.endpoint(), "cache-1")).await;
        match &r.outcome {
            ActionOutcome::Failed { error, .. } => {
                assert!(error.contains("already exists"), "{error}")
            }
            other => panic!("{other:?}"),
        }

        let r = ex
            .run(&ActionSpec::MirrorPromote {
                kind: DepKind::Redis,
                endpoint: endpoint.clone(),
                catch_up_to: Some(0),
                timeout_ms: Some(5000),
            })
            .await;
        assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
        assert!(r.output.unwrap()["reached_offset"].is_u64());
        let r = ex
            .run(&ActionSpec::MirrorFence {
                kind: DepKind::Redis,
                endpoint: primary.endpoint(),
                new_primary: Some(endpoint.clone()),
                timeout_ms: None,
            })
            .await;
        assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
        let st = probe(DepKind::Redis, &primary.endpoint(), T).await.unwrap();
        assert_eq!(st.replica_of.as_deref(), Some(endpoint.as_str()));

        let retire = ActionSpec::MirrorRetire {
            instance: "cache-1".into(),
            timeout_ms: None,
        };
        let r = ex.run(&retire).await;
        assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
        assert_eq!(r.output.unwrap()["found"], true);
        assert!(!mirror_dir.exists());
        assert!(!probe(DepKind::Redis, &endpoint, T).await.unwrap().reachable);
        // Asked twice (a server re-sending it): fine, nothing was there.
        let r = ex.run(&retire).await;
        assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
        assert_eq!(r.output.unwrap()["found"], false);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_or_refused_mirror_action_leaves_nothing() {
        let primary = TestRedis::start();
        let mut gone = TestRedis::start();
        let dead = gone.endpoint();
        gone.kill();
        let (ex, dir) = executor(&["mirror_provision"]);
        let r = ex.run(&provision(&dead, "c2")).await;
        match &r.outcome {
            ActionOutcome::Failed { error, .. } => {
                assert!(
                    error.contains(&dead) && error.contains("unreachable"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        let mirrors = dir.path().join("state/mirrors");
        assert!(!mirrors.exists() || std::fs::read_dir(&mirrors).unwrap().next().is_none());

        // Not on the allow-list: refused, nothing runs.
        let r = ex
            .run(&ActionSpec::MirrorFence {
                kind: DepKind::Redis,
                endpoint: primary.endpoint(),
                new_primary: None,
                timeout_ms: None,
            })
            .await;
        assert!(matches!(r.outcome, ActionOutcome::Refused { .. }), "{r:?}");
        let st = probe(DepKind::Redis, &primary.endpoint(), T).await.unwrap();
        assert_eq!(st.role, Some(Role::Primary));
        let mut c = bellwether_mirror::resp::Conn::connect(&primary.endpoint(), T)
            .await
            .unwrap();
        c.cmd_ok(&["SET", "still", "writable"]).await.unwrap();
    }
}
