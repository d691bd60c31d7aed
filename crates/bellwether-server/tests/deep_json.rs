//! Every JSON body the API reads goes through `parse_json`, on serde_json with its recursion
//! limit (128 levels; the `unbounded_depth` feature is not enabled anywhere in the
//! workspace): 100,000-deep input is refused at once, whatever the target type.

use std::time::{Duration, Instant};

use bellwether_model::HostProfile;
use bellwether_server::parse_json;
use bellwether_server::types::{BaselineRequest, EnrolRequest, SamplesRequest};

fn refused<T: serde::de::DeserializeOwned>(body: &str) -> String {
    let t = Instant::now();
    let e = match parse_json::<T>(body.as_bytes()) {
        Ok(_) => panic!("accepted {:.80}", body),
        Err(e) => e,
    };
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
    e.message
}

#[test]
fn deep_json_is_refused_at_once() {
    let deep = "[".repeat(100_000);
    let m = refused::<serde_json::Value>(&deep);
    assert!(m.contains("recursion limit exceeded"), "{m}");
    let m = refused::<serde_json::Value>(&format!("{}1{}", "[".repeat(129), "]".repeat(129)));
    assert!(m.contains("recursion limit exceeded"), "{m}");
    parse_json::<serde_json::Value>(format!("{}1{}", "[".repeat(127), "]".repeat(127)).as_bytes())
        .unwrap();
    let objects = "{\"a\":".repeat(100_000);
    let m = refused::<serde_json::Value>(&objects);
    assert!(m.contains("recursion limit exceeded"), "{m}");
    for body in [
        deep.clone(),
        objects.clone(),
        format!("{{\"labels\": {objects}"),
    ] {
        refused::<EnrolRequest>(&body);
        refused::<SamplesRequest>(&body);
        refused::<BaselineRequest>(&body);
        refused::<HostProfile>(&body);
    }
}
