//! Token roles, ids, creation and revocation, with every test body run against SQLite and
//! against PostgreSQL.

use bellwether_model::HostName;
use bellwether_store::testing::with_each_backend;
use bellwether_store::{Store, StoreConfig, StoreError, TokenKind};

macro_rules! both_backends {
    ($name:ident, |$store:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            with_each_backend(|config: StoreConfig| async move {
                let $store = Store::open(&config).await.expect("open store");
                $body
                $store.close().await;
            })
            .await;
        }
    };
}

both_backends!(
    made_tokens_get_ids_roles_and_survive_a_new_bootstrap_token,
    |store| {
        store
            .set_fleet_token(TokenKind::Admin, "admin-secret-000001", "test", 1)
            .await
            .unwrap();
        let admin = store
            .authenticate("admin-secret-000001")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(admin.kind, TokenKind::Admin);
        let viewer = store
            .create_token(
                TokenKind::Viewer,
                "viewer-secret-00001",
                "grafana",
                Some(admin.id),
                2,
            )
            .await
            .unwrap();
        let op = store
            .create_token(
                TokenKind::Operator,
                "operator-secret-0001",
                "alice",
                Some(admin.id),
                3,
            )
            .await
            .unwrap();
        assert!(
            viewer.id > admin.id && op.id > viewer.id,
            "{viewer:?} {op:?}"
        );
        assert_eq!(
            store
                .authenticate("viewer-secret-00001")
                .await
                .unwrap()
                .map(|g| (g.id, g.kind)),
            Some((viewer.id, TokenKind::Viewer))
        );
        // A made operator token is not the server's own: the bootstrap one is still missing, and
        // setting it leaves the made one valid.
        assert!(!store.has_token(TokenKind::Operator).await.unwrap());
        store
            .set_fleet_token(TokenKind::Operator, "operator-secret-boot", "test", 4)
            .await
            .unwrap();
        assert!(store.has_token(TokenKind::Operator).await.unwrap());
        assert!(store
            .authenticate("operator-secret-0001")
            .await
            .unwrap()
            .is_some());
        let listed: Vec<(TokenKind, String, bool)> = store
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.name, t.bootstrap))
            .collect();
        assert_eq!(
            listed,
            vec![
                (TokenKind::Admin, "admin.token".into(), true),
                (TokenKind::Viewer, "grafana".into(), false),
                (TokenKind::Operator, "alice".into(), false),
                (TokenKind::Operator, "operator.token".into(), true),
            ]
        );
        let created = store
            .events_where(None, Some("token_created"), 10)
            .await
            .unwrap();
        assert_eq!(created.len(), 2);
        assert_eq!(created[0].figures["token_id"], op.id);
        assert_eq!(created[0].figures["role"], "operator");
        assert_eq!(created[0].figures["by_token_id"], admin.id);
        assert!(!created[0].figures.to_string().contains("operator-secret"));
    }
);

both_backends!(
    revoked_tokens_stop_working_and_ids_are_never_reused,
    |store| {
        let v = store
            .create_token(TokenKind::Viewer, "viewer-secret-00001", "v1", None, 1)
            .await
            .unwrap();
        let revoked = store
            .revoke_token(v.id, Some(99), 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((revoked.id, revoked.kind), (v.id, TokenKind::Viewer));
        assert_eq!(
            store.authenticate("viewer-secret-00001").await.unwrap(),
            None
        );
        assert_eq!(store.revoke_token(v.id, None, 3).await.unwrap(), None);
        let again = store
            .create_token(TokenKind::Viewer, "viewer-secret-00002", "v2", None, 4)
            .await
            .unwrap();
        assert!(again.id > v.id);
        let ev = store
            .events_where(None, Some("token_revoked"), 10)
            .await
            .unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].figures["token_id"], v.id);
        assert_eq!(ev[0].figures["by_token_id"], 99);
        // An agent token can be revoked by id too; the event names its host.
        let web = HostName::new("web-01").unwrap();
        store
            .enrol(&web, &Default::default(), "agent-token-of-web-01", 5)
            .await
            .unwrap();
        let agent = store
            .authenticate("agent-token-of-web-01")
            .await
            .unwrap()
            .unwrap();
        store
            .revoke_token(agent.id, None, 6)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.authenticate("agent-token-of-web-01").await.unwrap(),
            None
        );
        let ev = store
            .events_where(Some(&web), Some("token_revoked"), 10)
            .await
            .unwrap();
        assert_eq!(ev.len(), 1);
    }
);

both_backends!(only_person_roles_are_made_and_names_are_checked, |store| {
    for kind in [TokenKind::Enrol, TokenKind::Agent] {
        let r = store
            .create_token(kind, "some-secret-0000001", "x", None, 1)
            .await;
        assert!(
            matches!(&r, Err(StoreError::BadInput { field, .. }) if field == "role"),
            "{r:?}"
        );
    }
    let r = store
        .create_token(TokenKind::Viewer, "short", "x", None, 1)
        .await;
    assert!(matches!(&r, Err(StoreError::BadInput { .. })), "{r:?}");
    for name in ["", "  ", "a\nb", &"n".repeat(201)] {
        let r = store
            .create_token(TokenKind::Viewer, "some-secret-0000001", name, None, 1)
            .await;
        assert!(
            matches!(&r, Err(StoreError::BadInput { field, .. }) if field == "name"),
            "{name:?} {r:?}"
        );
    }
    assert!(store.tokens().await.unwrap().is_empty());
});

both_backends!(events_filter_by_host_and_kind, |store| {
    use bellwether_store::EventKind;
    let web = HostName::new("web-01").unwrap();
    let j = serde_json::json!({});
    store
        .record_event(EventKind::Audit, None, "a", &j, 1)
        .await
        .unwrap();
    store
        .record_event(EventKind::Audit, Some(&web), "b", &j, 2)
        .await
        .unwrap();
    store
        .record_event(EventKind::SamplesDropped, Some(&web), "c", &j, 3)
        .await
        .unwrap();
    let reasons =
        |evs: Vec<bellwether_store::Event>| evs.into_iter().map(|e| e.reason).collect::<Vec<_>>();
    assert_eq!(
        reasons(store.events_where(None, Some("audit"), 10).await.unwrap()),
        ["b", "a"]
    );
    assert_eq!(
        reasons(store.events_where(Some(&web), None, 10).await.unwrap()),
        ["c", "b"]
    );
    assert_eq!(
        reasons(
            store
                .events_where(Some(&web), Some("audit"), 10)
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        reasons(store.events_where(None, None, 1).await.unwrap()),
        ["c"]
    );
});
