//! Failover against real local HTTP listeners: servers that are down, answer 503, name a
//! leader, or drop a request they read.

use std::sync::atomic::AtomicU32;

use axum::http::{HeaderMap, HeaderValue, StatusCode as Status};
use axum::response::IntoResponse;

use super::*;

/// A stand-in server that counts the requests it gets and answers each with `reply`.
struct Stub {
    url: String,
    hits: Arc<AtomicU32>,
}

impl Stub {
    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What a stub answers: a status, an optional leader header, and a JSON body.
#[derive(Clone)]
struct Reply {
    status: Status,
    leader: Option<String>,
    body: serde_json::Value,
}

fn ok(body: serde_json::Value) -> Reply {
    Reply {
        status: Status::OK,
        leader: None,
        body,
    }
}

fn status(status: Status, leader: Option<&str>) -> Reply {
    Reply {
        status,
        leader: leader.map(str::to_owned),
        body: serde_json::json!({"error": format!("stub says {}", status.as_u16())}),
    }
}

async fn stub(reply: Reply) -> Stub {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let handler = move || {
        let reply = reply.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut headers = HeaderMap::new();
            if let Some(l) = &reply.leader {
                headers.insert("x-bellwether-leader", HeaderValue::from_str(l).unwrap());
            }
            (reply.status, headers, axum::Json(reply.body)).into_response()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stub { url, hits }
}

/// An address where nothing listens: a port bound and released.
async fn dead() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A server that reads a request and closes the connection without answering: the request
/// reached it, so it may have been carried out.
async fn dropper() -> Stub {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            drop(sock);
        }
    });
    Stub { url, hits }
}

fn client(urls: &[&str]) -> Client {
    Client::new(&urls.join(","), "op-token").unwrap()
}

fn hosts_body() -> serde_json::Value {
    serde_json::json!([])
}

#[tokio::test]
async fn a_dead_server_is_skipped_and_the_one_that_answered_is_tried_first() {
    let down = dead().await;
    let up = stub(ok(hosts_body())).await;
    let c = client(&[&down, &up.url]);
    assert_eq!(c.base(), down);
    c.hosts().await.unwrap();
    assert_eq!(
        c.base(),
        up.url,
        "the address that answered comes first now"
    );
    c.clone().hosts().await.unwrap();
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn the_last_good_address_is_tried_first() {
    let unavailable = stub(status(Status::SERVICE_UNAVAILABLE, None)).await;
    let up = stub(ok(hosts_body())).await;
    let c = client(&[&unavailable.url, &up.url]);
    c.hosts().await.unwrap();
    assert_eq!(unavailable.hits(), 1);
    c.hosts().await.unwrap();
    c.hosts().await.unwrap();
    assert_eq!(
        unavailable.hits(),
        1,
        "not asked again while the other answers"
    );
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_follower_naming_the_leader_sends_the_call_there_next() {
    let leader = stub(ok(hosts_body())).await;
    let other = stub(ok(hosts_body())).await;
    let follower = stub(status(Status::SERVICE_UNAVAILABLE, Some(&leader.url))).await;
    let c = client(&[&follower.url, &other.url, &leader.url]);
    c.hosts().await.unwrap();
    assert_eq!((follower.hits(), other.hits(), leader.hits()), (1, 0, 1));
    // 421 Misdirected Request with the leader's URL, on a write, works the same way.
    let leader_posts = stub(ok(serde_json::json!({"captured": [], "skipped": []}))).await;
    let misdirected = stub(status(
        Status::MISDIRECTED_REQUEST,
        Some(&format!("{}/", leader_posts.url)),
    ))
    .await;
    let c = client(&[&misdirected.url, &other.url, &leader_posts.url]);
    c.capture_baselines(&BaselineRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (misdirected.hits(), other.hits(), leader_posts.hits()),
        (1, 0, 1)
    );
}

#[tokio::test]
async fn a_leader_outside_the_list_is_never_contacted() {
    let stranger = stub(ok(hosts_body())).await;
    let follower = stub(status(Status::SERVICE_UNAVAILABLE, Some(&stranger.url))).await;
    let up = stub(ok(hosts_body())).await;
    let c = client(&[&follower.url, &up.url]);
    c.hosts().await.unwrap();
    assert_eq!(
        stranger.hits(),
        0,
        "the token goes only to configured addresses"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn answers_the_request_caused_do_not_fail_over() {
    for code in [
        Status::UNAUTHORIZED,
        Status::NOT_FOUND,
        Status::INTERNAL_SERVER_ERROR,
    ] {
        let first = stub(status(code, None)).await;
        let second = stub(ok(hosts_body())).await;
        let c = client(&[&first.url, &second.url]);
        let e = c.hosts().await.unwrap_err();
        assert_eq!(second.hits(), 0, "{code}: {e}");
        match e {
            ClientError::Unauthorized { .. } => assert_eq!(code, Status::UNAUTHORIZED),
            ClientError::Api { status, .. } => assert_eq!(status, code.as_u16()),
            other => panic!("{code}: {other}"),
        }
    }
}

#[tokio::test]
async fn a_write_the_server_may_have_taken_is_not_sent_elsewhere() {
    let taken = dropper().await;
    let second = stub(ok(serde_json::json!({"captured": [], "skipped": []}))).await;
    let c = client(&[&taken.url, &second.url]);
    let e = c
        .capture_baselines(&BaselineRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert_eq!((taken.hits(), second.hits()), (1, 0));
    // A read is safe to repeat: it moves on.
    let second = stub(ok(hosts_body())).await;
    let c = client(&[&taken.url, &second.url]);
    c.hosts().await.unwrap();
    assert_eq!(second.hits(), 1);
}

#[tokio::test]
async fn with_no_server_available_a_call_ends_within_its_budget() {
    let a = dead().await;
    let b = stub(status(Status::SERVICE_UNAVAILABLE, None)).await;
    let budget = Duration::from_millis(1200);
    let c = client(&[&a, &b.url]).with_failover_budget(budget);
    let started = std::time::Instant::now();
    let e = c.hosts().await.unwrap_err();
    let took = started.elapsed();
    assert!(took < budget + Duration::from_secs(1), "{took:?}");
    assert!(b.hits() >= 2, "several passes: {}", b.hits());
    let text = e.to_string();
    assert!(
        text.starts_with("no bellwether server took the request within 1200 ms: ")
            && text.contains(&format!("{} answered 503: stub says 503", b.url))
            && text.contains(&format!(
                "cannot reach the bellwether server at {a}/api/v1/hosts"
            )),
        "{text}"
    );
}

#[tokio::test]
async fn one_address_is_one_attempt_as_before() {
    let b = stub(status(Status::SERVICE_UNAVAILABLE, None)).await;
    let c = client(&[&b.url]);
    let e = c.hosts().await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 503, .. }), "{e}");
    assert_eq!(b.hits(), 1);
    let down = dead().await;
    let e = Client::new(&down, "t").unwrap().hosts().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
}

#[test]
fn address_lists_are_checked() {
    let e = Client::new("http://a:1,,http://b:2", "t").unwrap_err();
    assert!(e.to_string().contains("is empty (a stray comma?)"), "{e}");
    let tls = bellwether_tls::ClientTls {
        ca_file: None,
        pins: vec![bellwether_tls::Pin([1; 32])],
    };
    let e = Client::with_tls("https://a:1,http://b:2", "t", &tls).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"http://b:2\": --ca-file and --pin verify an https:// server"),
        "{e}"
    );
    let c = Client::new("http://a:1/, http://b:2", "t").unwrap();
    assert_eq!(c.servers().urls(), ["http://a:1", "http://b:2"]);
}
