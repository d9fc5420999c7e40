//! SAS tokens computed independently with Python's `hmac`/`base64`/`urllib`
//! (`testdata/make_sas_vectors.py`) in every encoding the SDKs use: each must parse, verify,
//! and authorize (or fail) exactly as the vector says, and `sign` must produce the Node form
//! byte for byte.

use casement_iothub::sas::{self, SasError, SasToken};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../testdata/sas_vectors.json"))
        .expect("testdata/sas_vectors.json is valid JSON")
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Parses, verifies and authorizes one vector; returns the outcome's name.
fn outcome(v: &Value) -> (String, Option<SasToken>) {
    let token = match SasToken::parse(v["token"].as_str().unwrap()) {
        Ok(t) => t,
        Err(SasError::Malformed(_)) => return ("Malformed".into(), None),
        Err(e) => panic!("parse returned {e:?}"),
    };
    let keys = str_list(&v["keys"]);
    let result = sas::verify(
        &token,
        &keys,
        v["now"].as_u64().unwrap(),
        v["skew"].as_u64().unwrap(),
    )
    .and_then(|()| match v.get("aliases") {
        Some(aliases) => sas::authorize_for_host(
            &token.resource,
            &str_list(aliases),
            v["path"].as_str().unwrap(),
        ),
        None => Ok(()),
    });
    let name = match result {
        Ok(()) => "ok",
        Err(SasError::BadSignature) => "BadSignature",
        Err(SasError::Expired { .. }) => "Expired",
        Err(SasError::WrongResource { .. }) => "WrongResource",
        Err(SasError::Malformed(_)) => "Malformed",
        Err(SasError::InvalidKey) => "InvalidKey",
    };
    (name.into(), Some(token))
}

#[test]
fn every_verify_vector_has_its_expected_outcome() {
    let vectors = vectors();
    let list = vectors["verify"].as_array().unwrap();
    assert!(list.len() >= 15, "vectors went missing");
    for v in list {
        let name = v["name"].as_str().unwrap();
        let (got, token) = outcome(v);
        assert_eq!(
            got,
            v["expect"].as_str().unwrap(),
            "vector {name}: {}",
            v["note"]
        );
        if let (Some(token), Some(resource)) = (token, v.get("resource")) {
            assert_eq!(token.resource, resource.as_str().unwrap(), "vector {name}");
        }
    }
}

#[test]
fn vectors_cover_the_sdk_encodings() {
    let vectors = vectors();
    let tokens: Vec<&str> = vectors["verify"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["expect"] == "ok")
        .map(|v| v["token"].as_str().unwrap())
        .collect();
    let any = |pred: &dyn Fn(&str) -> bool| tokens.iter().any(|t| pred(t));
    assert!(any(&|t| t.contains("%2F")), "Node uppercase escapes");
    assert!(any(&|t| t.contains("%2f")), "C SDK lowercase escapes");
    assert!(any(&|t| t.contains("sr=localhost:8443&")), "raw host");
    assert!(
        any(&|t| t.contains("sr=localhost%3A8443&")),
        "quote_plus host with port"
    );
    assert!(
        any(&|t| t.split("sig=").nth(1).is_some_and(|s| s
            .split('&')
            .next()
            .unwrap()
            .contains('/'))),
        "Python sig with a raw '/'"
    );
    assert!(any(&|t| t.contains("&skn=")), "skn present");
    assert!(any(&|t| !t.contains("skn=")), "skn absent");
    assert!(
        any(&|t| t.starts_with("SharedAccessSignature se=")),
        "fields reordered"
    );
}

#[test]
fn sign_matches_the_independent_node_form() {
    let vectors = vectors();
    for v in vectors["sign"].as_array().unwrap() {
        let token = sas::sign(
            v["resource"].as_str().unwrap(),
            v["key"].as_str().unwrap(),
            v["key_name"].as_str(),
            v["expiry"].as_u64().unwrap(),
        )
        .unwrap();
        assert_eq!(token, v["token"].as_str().unwrap(), "{}", v["resource"]);
        // And what we sign, we verify.
        let parsed = SasToken::parse(&token).unwrap();
        sas::verify(&parsed, &[v["key"].as_str().unwrap()], 0, 0).unwrap();
        assert_eq!(parsed.resource, v["resource"].as_str().unwrap());
    }
}
