//! The leader lease and the fencing of durable saves, on both backends (each PostgreSQL run in
//! a schema of its own): two `Store` handles on one store stand for two server replicas.
//! Expiry is the database's clock, so the tests wait for it by reading the lease, never by a
//! fixed sleep.

use std::time::{Duration, Instant};

use bellwether_store::testing::with_each_backend;
use bellwether_store::{Fence, NewAction, NewRollout, StepRecord, Store, StoreConfig, StoreError};
use serde_json::json;

const TTL: Duration = Duration::from_secs(30);

/// Waits until the lease has expired on the database's clock (it was granted for a short ttl).
async fn until_expired(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rec = store.leader_lease().await.unwrap();
        if !rec.is_live() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the lease never expired: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rollout(id: &str) -> (NewRollout, StepRecord) {
    let new = NewRollout {
        id: id.into(),
        phase: "running".into(),
        model_version: None,
        plan_file: "plan.yaml".into(),
        plan_yaml: "name: x".into(),
        state: json!({"step": 0}),
        hosts: vec![("web-01".into(), Default::default())],
    };
    let first = StepRecord {
        phase: "running".into(),
        state: json!({"step": 0}),
        ..StepRecord::default()
    };
    (new, first)
}

fn step(n: u64) -> StepRecord {
    StepRecord {
        phase: "running".into(),
        state: json!({ "step": n }),
        dispatches: vec![NewAction {
            action_id: n,
            uid: format!("{n:0>32}"),
            host: "web-01".into(),
            kind: "apply".into(),
            spec: json!({"builtin": "set_service_version", "version": "2"}),
        }],
        ..StepRecord::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_every_term_has_a_larger_epoch() {
    with_each_backend(|config: StoreConfig| async move {
        let a = Store::open(&config).await.unwrap();
        let b = Store::open(&config).await.unwrap();
        let fresh = a.leader_lease().await.unwrap();
        assert_eq!((fresh.holder.as_deref(), fresh.epoch), (None, 0));
        assert!(!fresh.is_live());

        let ga = a
            .acquire_lease("replica-a", "http://a:7878", TTL)
            .await
            .unwrap()
            .expect("a free lease is taken");
        assert_eq!(
            ga.fence,
            Fence {
                holder: "replica-a".into(),
                epoch: 1
            }
        );
        // The expiry is ttl after the database's now.
        assert_eq!(ga.expires_at_ms - ga.db_now_ms, TTL.as_millis() as i64);
        // Nobody else takes a live lease, nor does its holder twice.
        assert!(b
            .acquire_lease("replica-b", "http://b:7878", TTL)
            .await
            .unwrap()
            .is_none());
        assert!(a
            .acquire_lease("replica-a", "http://a:7878", TTL)
            .await
            .unwrap()
            .is_none());
        let seen = b.leader_lease().await.unwrap();
        assert!(seen.is_live());
        assert_eq!(seen.holder.as_deref(), Some("replica-a"));
        assert_eq!(seen.holder_url.as_deref(), Some("http://a:7878"));
        assert_eq!(seen.epoch, 1);

        // Renewal: only for the same holder and epoch.
        let renewed = a
            .renew_lease(&ga.fence, TTL)
            .await
            .unwrap()
            .expect("renewed");
        assert!(renewed.expires_at_ms >= ga.expires_at_ms);
        let wrong_epoch = Fence {
            holder: "replica-a".into(),
            epoch: 7,
        };
        assert!(a.renew_lease(&wrong_epoch, TTL).await.unwrap().is_none());
        let other = Fence {
            holder: "replica-b".into(),
            epoch: 1,
        };
        assert!(b.renew_lease(&other, TTL).await.unwrap().is_none());

        // A release frees it at once; the next term's epoch is still larger.
        assert!(!b.release_lease(&other).await.unwrap(), "b never held it");
        assert!(a.release_lease(&ga.fence).await.unwrap());
        assert!(!b.leader_lease().await.unwrap().is_live());
        let gb = b
            .acquire_lease("replica-b", "http://b:7878", TTL)
            .await
            .unwrap()
            .expect("a released lease is taken at once");
        assert_eq!(gb.fence.epoch, 2);
        // The old holder's token is worth nothing now.
        assert!(a.renew_lease(&ga.fence, TTL).await.unwrap().is_none());
        assert!(!a.release_lease(&ga.fence).await.unwrap());
        assert_eq!(
            b.leader_lease().await.unwrap().holder.as_deref(),
            Some("replica-b")
        );

        // Bad ttls are refused by name.
        for bad in [Duration::ZERO, Duration::from_secs(7200)] {
            let e = b.acquire_lease("replica-c", "", bad).await.unwrap_err();
            assert!(e.to_string().contains("lease ttl"), "{e}");
        }
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_lost_even_when_nobody_took_it() {
    with_each_backend(|config: StoreConfig| async move {
        let a = Store::open(&config).await.unwrap();
        let b = Store::open(&config).await.unwrap();
        let short = Duration::from_millis(300);
        let ga = a
            .acquire_lease("replica-a", "http://a", short)
            .await
            .unwrap()
            .unwrap();
        until_expired(&b).await;
        // Expired: its holder cannot renew it back to life, and it must acquire again under a
        // new epoch (its runners of epoch 1 stop).
        assert!(a.renew_lease(&ga.fence, short).await.unwrap().is_none());
        let again = a
            .acquire_lease("replica-a", "http://a", TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.fence.epoch, 2);
        // Or another replica takes it after it expired.
        let short_b = b.renew_lease(&again.fence, short).await.unwrap();
        assert!(
            short_b.is_some(),
            "the holder's renewal (through any handle) extends it"
        );
        until_expired(&b).await;
        let gb = b
            .acquire_lease("replica-b", "http://b", TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            gb.fence,
            Fence {
                holder: "replica-b".into(),
                epoch: 3
            }
        );
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_is_refused_once_its_fence_is_no_longer_the_lease() {
    with_each_backend(|config: StoreConfig| async move {
        let a = Store::open(&config).await.unwrap();
        let b = Store::open(&config).await.unwrap();
        let (new, first) = rollout("r-1");
        assert_eq!(a.create_rollout(&new, &first, 1).await.unwrap(), None);

        // A store whose fence was never set checks nothing (one process owns it).
        a.save_rollout_step("r-1", &step(1), 2).await.unwrap();

        // Fencing on and not leading: refused.
        a.set_fence(None);
        let e = a.save_rollout_step("r-1", &step(2), 3).await.unwrap_err();
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");

        // Leading with a short lease: saves go through while it is live.
        let ga = a
            .acquire_lease("replica-a", "http://a", Duration::from_millis(400))
            .await
            .unwrap()
            .unwrap();
        a.set_fence(Some(ga.fence.clone()));
        assert_eq!(a.fence(), Some(ga.fence.clone()));
        a.save_rollout_step("r-1", &step(2), 4).await.unwrap();

        // Expired (nobody took it yet): refused, by the database's clock.
        until_expired(&b).await;
        let e = a.save_rollout_step("r-1", &step(3), 5).await.unwrap_err();
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");

        // B takes over; A, still believing in epoch 1, is refused and says who holds it.
        let gb = b
            .acquire_lease("replica-b", "http://b", TTL)
            .await
            .unwrap()
            .unwrap();
        b.set_fence(Some(gb.fence.clone()));
        let e = a.save_rollout_step("r-1", &step(3), 6).await.unwrap_err();
        let StoreError::Fenced {
            holder,
            epoch,
            reason,
        } = &e
        else {
            panic!("not fenced: {e}");
        };
        assert_eq!((holder.as_deref(), *epoch), (Some("replica-a"), Some(1)));
        assert!(reason.contains("replica-b at epoch 2"), "{reason}");
        assert_eq!(
            e.failure_kind(),
            bellwether_store::FailureKind::Unavailable,
            "a fenced write may succeed at the leader"
        );
        // Nothing of the refused steps was written: state, events, actions.
        let rec = b.rollout("r-1").await.unwrap().unwrap();
        assert_eq!(rec.state, json!({"step": 2}));
        let actions = b.rollout_actions("r-1").await.unwrap();
        let ids: Vec<u64> = actions.iter().map(|a| a.action_id).collect();
        assert_eq!(
            ids,
            vec![1, 2],
            "only the saves under a live fence queued actions"
        );

        // The new leader saves.
        b.save_rollout_step("r-1", &step(3), 7).await.unwrap();
        assert_eq!(
            b.rollout("r-1").await.unwrap().unwrap().state,
            json!({"step": 3})
        );
        a.close().await;
        b.close().await;
    })
    .await;
}
