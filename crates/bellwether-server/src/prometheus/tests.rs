use super::*;

fn ok(body: &str) -> QueryData {
    match parse(body.as_bytes()).unwrap() {
        Answer::Success { data, .. } => data,
        e => panic!("{e:?}"),
    }
}

fn err(body: &str) -> String {
    parse(body.as_bytes()).unwrap_err().to_string()
}

#[test]
fn parses_the_result_types() {
    let v = ok(
        r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"up","instance":"web-01"},"value":[1712345678.123,"1"]}]}}"#,
    );
    assert_eq!(
        v,
        QueryData::Vector(vec![Series {
            labels: [("__name__", "up"), ("instance", "web-01")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            points: vec![Point {
                ts_ms: 1_712_345_678_123,
                value: 1.0
            }],
        }])
    );
    let m = ok(
        r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{},"values":[[10,"0.5"],[11,"NaN"],[12,"+Inf"],[13,"-Inf"],[14,"1e-3"]]}]},
        "warnings":["a warning"]}"#,
    );
    let QueryData::Matrix(s) = m else { panic!() };
    let vals: Vec<f64> = s[0].points.iter().map(|p| p.value).collect();
    assert_eq!(vals[0], 0.5);
    assert!(vals[1].is_nan());
    assert_eq!(vals[2], f64::INFINITY);
    assert_eq!(vals[3], f64::NEG_INFINITY);
    assert_eq!(vals[4], 0.001);
    assert_eq!(s[0].points[4].ts_ms, 14_000);
    assert_eq!(
        ok(r#"{"status":"success","data":{"resultType":"scalar","result":[5.5,"2"]}}"#),
        QueryData::Scalar(Point {
            ts_ms: 5500,
            value: 2.0
        })
    );
    assert_eq!(
        ok(r#"{"status":"success","data":{"resultType":"string","result":[1,"hi"]}}"#),
        QueryData::String {
            ts_ms: 1000,
            value: "hi".into()
        }
    );
    assert_eq!(
        ok(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#),
        QueryData::Vector(vec![])
    );
    // Newer servers' `infos` and unknown keys are ignored.
    ok(r#"{"status":"success","data":{"resultType":"vector","result":[]},"infos":["x"],"x":1}"#);
}

#[test]
fn an_error_answer_keeps_its_type_and_message() {
    assert_eq!(
        parse(
            br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#
        )
        .unwrap(),
        Answer::Error {
            error_type: "bad_data".into(),
            error: "1:5: parse error: unexpected".into()
        }
    );
    assert_eq!(
        parse(br#"{"status":"error"}"#).unwrap(),
        Answer::Error {
            error_type: "unknown".into(),
            error: String::new()
        }
    );
}

#[test]
fn bad_answers_are_refused_with_their_path() {
    let cases = [
        ("", ".: EOF while parsing a value at line 1 column 0"),
        ("<html>", ".: expected value at line 1 column 1"),
        ("{}", ".: missing field `status`"),
        (r#"{"status":"maybe"}"#, "status: \"maybe\" is neither \"success\" nor \"error\""),
        (r#"{"status":"success"}"#, "data: a successful answer has no data"),
        (
            r#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
            "data.resultType: unknown variant `histogram`, expected one of `vector`, `matrix`, `scalar`, `string`",
        ),
        (
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}"#,
            "data.result[0].value[1]: invalid type: integer `2`, expected a string",
        ),
        (
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x1"]}]}}"#,
            "data.result[0].value: value \"x1\" is not a number",
        ),
        (
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1e300,"1"]}]}}"#,
            "data.result[0].value: time 1e300 is not Unix seconds",
        ),
        (
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[2,"1"],[1,"1"]]}]}}"#,
            "data.result[0].values[1]: times do not increase",
        ),
        (
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":1},"values":[]}]}}"#,
            "data.result[0].metric.a: invalid type: integer `1`, expected a string",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .map(|(body, want)| (body, want, err(body)))
        .filter(|(_, want, e)| !e.starts_with(*want))
        .map(|(body, _, e)| format!("{body}: {e}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn one_series_per_host() {
    let series = |n: usize, vals: &[&str]| {
        let one = format!(
            r#"{{"metric":{{"host":"h{{}}"}},"values":[{}]}}"#,
            vals.iter()
                .enumerate()
                .map(|(i, v)| format!("[{},\"{v}\"]", i + 1))
                .collect::<Vec<_>>()
                .join(",")
        );
        let all: Vec<String> = (0..n).map(|i| one.replace("{}", &i.to_string())).collect();
        ok(&format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{}]}}}}"#,
            all.join(",")
        ))
    };
    assert_eq!(
        host_points(series(1, &["1", "NaN", "3"])).unwrap(),
        vec![
            Point {
                ts_ms: 1000,
                value: 1.0
            },
            Point {
                ts_ms: 3000,
                value: 3.0
            }
        ]
    );
    assert_eq!(
        host_points(series(0, &[])).unwrap_err(),
        "the query returned no series"
    );
    assert_eq!(
        host_points(series(1, &["NaN", "+Inf"])).unwrap_err(),
        "the query's values are all NaN or infinite (a ratio of zero rates?)"
    );
    assert_eq!(
        host_points(series(3, &["1"])).unwrap_err(),
        r#"the query returned 3 series ({host="h0"}, {host="h1"}, …); it must give one per host: aggregate it (sum, avg, max)"#
    );
    assert!(host_points(QueryData::String {
        ts_ms: 0,
        value: "x".into()
    })
    .is_err());
    assert_eq!(
        host_points(QueryData::Scalar(Point {
            ts_ms: 1,
            value: 2.0
        }))
        .unwrap()
        .len(),
        1
    );
}

#[test]
fn times_are_written_as_seconds() {
    assert_eq!(secs(1_712_345_678_123), "1712345678.123");
    assert_eq!(secs(5), "0.005");
    assert_eq!(secs(-1500), "-1.500");
}

#[tokio::test]
async fn an_unreachable_prometheus_is_an_error_naming_it() {
    // A port that was free a moment ago: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let c = Client::new(reqwest::Client::new(), &addr, Duration::from_secs(2));
    let e = c.query("up", 0).await.unwrap_err();
    assert!(matches!(e, PromError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("Prometheus at {addr} did not answer: ")),
        "{e}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any JSON value parses or is refused with a path; it never panics.
    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let body = serde_json::to_vec(&v).unwrap();
        if let Err(e) = parse(&body) {
            proptest::prop_assert!(!e.path.is_empty());
        }
    }

    /// Answers of the right shape with arbitrary values parse or name the bad point.
    #[test]
    fn arbitrary_points_never_panic(t in proptest::num::f64::ANY, v in ".{0,12}") {
        let body = serde_json::json!({"status": "success", "data": {"resultType": "matrix",
            "result": [{"metric": {}, "values": [[t, v]]}]}});
        if let Ok(b) = serde_json::to_vec(&body) {
            if let Err(e) = parse(&b) {
                proptest::prop_assert!(e.path.starts_with("data"), "{e}");
            }
        }
    }
}

fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        proptest::sample::select(vec![
            "success", "error", "vector", "matrix", "scalar", "NaN", "1", "x"
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "status",
                    "data",
                    "resultType",
                    "result",
                    "metric",
                    "value",
                    "values",
                    "errorType",
                    "error"
                ])
                .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
