//! The API's JSON body parser never panics, and its errors always name a place.

use bellwether_model::HostProfile;
use bellwether_server::parse_json;
use bellwether_server::types::{BaselineRequest, EnrolRequest, SamplesRequest};
use proptest::prelude::*;

fn check<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
    if let Err(e) = parse_json::<T>(bytes) {
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(!e.message.is_empty());
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check::<SamplesRequest>(&bytes);
        check::<EnrolRequest>(&bytes);
        check::<BaselineRequest>(&bytes);
        check::<HostProfile>(&bytes);
    }

    #[test]
    fn json_shaped_text_never_panics(s in r#"\{("(samples|name|labels|hosts|all|dropped|ts_ms|value|kernel)": ?(\[|\{|"[a-z/ ]{0,8}"|-?[0-9]{1,20}(\.[0-9]+)?|true|null|\]|\}),? ?){0,8}\}?"#) {
        check::<SamplesRequest>(s.as_bytes());
        check::<EnrolRequest>(s.as_bytes());
        check::<BaselineRequest>(s.as_bytes());
        check::<HostProfile>(s.as_bytes());
    }
}

#[test]
fn errors_name_the_nested_field_and_position() {
    let e = parse_json::<SamplesRequest>(br#"{"samples": [{"ts_ms": 1, "name": "x", "value": 1}, {"ts_ms": "soon", "name": "x", "value": 1}]}"#).unwrap_err();
    assert!(e.message.contains("samples[1].ts_ms"), "{}", e.message);
    assert!(e.message.contains("line 1 column"), "{}", e.message);
    let e = parse_json::<SamplesRequest>(br#"{"samples": []} trailing"#).unwrap_err();
    assert!(e.message.contains("trailing"), "{}", e.message);
}

#[test]
fn every_route_is_documented_in_api_md_and_openapi_yaml() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let api_md = std::fs::read_to_string(root.join("docs/api.md")).expect("docs/api.md");
    let openapi =
        std::fs::read_to_string(root.join("docs/openapi.yaml")).expect("docs/openapi.yaml");
    for (method, path) in bellwether_server::ROUTES {
        let heading = format!("### `{method} {path}");
        assert!(
            api_md.contains(&format!("{heading}`")) || api_md.contains(&format!("{heading}[")),
            "docs/api.md lacks a section for {method} {path}"
        );
        assert!(
            openapi.contains(&format!("  {path}:\n")),
            "docs/openapi.yaml lacks {path}"
        );
    }
}
