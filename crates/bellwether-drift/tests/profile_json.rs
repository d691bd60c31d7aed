//! The JSON parsers of profiles and drift scores never panic, whatever they are fed, and a
//! profile survives a round trip.

use bellwether_drift::synth::{profile_of, HostSpec};
use bellwether_model::profile::WatchedFile;
use bellwether_model::{DriftScore, HostProfile};
use proptest::prelude::*;

/// A profile with watched files, so the parsers also go through `files`.
fn sample() -> HostProfile {
    let mut p = profile_of(&HostSpec::generate(9, "json-1", 20));
    p.files.insert(
        "etc/websvc.conf".into(),
        WatchedFile {
            sha256: Some(bellwether_drift::root::sha256_hex(b"workers = 4\n")),
            size: Some(12),
        },
    );
    p.files
        .insert("etc/gone.conf".into(), WatchedFile::default());
    p
}

fn sample_json() -> String {
    serde_json::to_string(&sample()).unwrap()
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,400}") {
        let _ = serde_json::from_str::<HostProfile>(&s);
        let _ = serde_json::from_str::<DriftScore>(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = serde_json::from_slice::<HostProfile>(&b);
        let _ = serde_json::from_slice::<DriftScore>(&b);
    }

    /// Valid JSON with one byte changed, cut short or with a value replaced: close to real
    /// input, so the parser goes deep before it fails.
    #[test]
    fn mutated_profiles_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(), junk in "[-0-9a-z\"{}\\[\\],:.eE+]{0,8}") {
        let json = sample_json();
        let mut bytes = json.clone().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = serde_json::from_slice::<HostProfile>(&bytes);
        let _ = serde_json::from_str::<HostProfile>(&json[..cut.index(json.len())]);
        let replaced = json.replacen("\"load1\":", &format!("\"load1\":{junk},\"x\":"), 1);
        let _ = serde_json::from_str::<HostProfile>(&replaced);
        let replaced = json.replacen("\"size\":12", &format!("\"size\":{junk}"), 1);
        let _ = serde_json::from_str::<HostProfile>(&replaced);
    }
}

#[test]
fn profiles_round_trip_through_json() {
    let p = profile_of(&HostSpec::generate(9, "json-1", 20));
    let back: HostProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let p = sample();
    let back: HostProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.files["etc/gone.conf"], WatchedFile::default());
}

/// Profiles stored or sent before files were watched have no `files`; they still parse, and
/// a profile that watches nothing writes none, so older readers (which refuse unknown
/// fields) still read it.
#[test]
fn profiles_without_watched_files_read_and_write_as_before() {
    let old = r#"{"hostname":"web-1","collected_at_ms":5,"kernel":"6.1.0","metrics":{"load1":0.5},"notes":[]}"#;
    let p: HostProfile = serde_json::from_str(old).unwrap();
    assert!(p.files.is_empty());
    assert_eq!(p.kernel.as_deref(), Some("6.1.0"));
    assert!(!serde_json::to_string(&p).unwrap().contains("files"));
    let err = bellwether_drift::json::parse_profile(
        r#"{"files":{"etc/a.conf":{"sha256":"ab","bytes":3}}}"#,
    )
    .unwrap_err();
    assert!(err.field.starts_with("files"), "{err}");
    assert!(err.message.contains("unknown field `bytes`"), "{err}");
}

#[test]
fn unknown_fields_and_bad_types_are_errors_naming_the_field() {
    let err =
        serde_json::from_str::<HostProfile>(r#"{"hostname":"a","kernal":"6.1"}"#).unwrap_err();
    assert!(err.to_string().contains("kernal"), "{err}");
    let err =
        serde_json::from_str::<HostProfile>(r#"{"hardware":{"cpu_count":"four"}}"#).unwrap_err();
    assert!(err.to_string().contains("line 1 column"), "{err}");
}
