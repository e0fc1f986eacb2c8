//! The HTTP API's untrusted request input: query strings (goim's parameters,
//! lists as repeated keys) and the JSON push bodies.

use axum::response::IntoResponse;
use herald_logic::http::{check_json_push, ApiError, Params};
use serde_json::Value;

/// Every parameter name an endpoint reads.
const NAMES: &[&str] = &[
    "operation",
    "keys",
    "mids",
    "type",
    "room",
    "speed",
    "limit",
    "rooms",
    "platform",
];
/// How many of the names found in the input itself are read too.
const MORE_NAMES: usize = 8;

/// Reads `data` as a query string with every getter the endpoints use, and as a
/// JSON push body for both JSON push endpoints under two sets of limits.
pub fn http_query(data: &[u8]) {
    query(&String::from_utf8_lossy(data));
    json_push(data);
}

fn query(raw: &str) {
    let p = Params::parse(Some(raw.to_string()));
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let found = pairs.iter().map(|(k, _)| k.as_str()).take(MORE_NAMES);
    let names: Vec<&str> = NAMES.iter().copied().chain(found).collect();
    for name in &names {
        getters(&p, name);
    }
    // The same pairs encoded again read alike.
    let again = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    let q = Params::parse(Some(again));
    for name in &names {
        assert_eq!(p.one(name), q.one(name), "{name} after re-encoding");
        assert_eq!(p.all(name), q.all(name), "{name} after re-encoding");
    }
    assert!(Params::parse(None).one("operation").is_none());
}

/// The typed getters agree with each other, and refuse only with client errors.
fn getters(p: &Params, name: &str) {
    let one = p.one(name);
    assert_eq!(p.has(name), one.is_some());
    let all = p.all(name);
    assert!(all.iter().all(|v| !v.is_empty()));
    match p.text(name) {
        Ok(t) => assert_eq!((Some(t), t.is_empty()), (one, false)),
        Err(e) => client_error(e, one.is_some_and(|v| !v.is_empty())),
    }
    let int = p.int::<i64>(name);
    match (&int, one) {
        (Ok(v), None | Some("")) => assert_eq!(*v, 0),
        (Ok(v), Some(s)) => assert_eq!(s.trim().parse::<i64>().ok(), Some(*v)),
        (Err(_), _) => {}
    }
    match p.required_int::<i64>(name) {
        Ok(v) => assert_eq!((v != 0, int.ok()), (true, Some(v))),
        Err(e) => client_error(e, int.is_ok_and(|v| v != 0)),
    }
    if let Err(e) = p.int::<i32>(name) {
        client_error(e, false);
    }
    match p.ints::<i64>(name) {
        Ok(v) => assert_eq!(v.len(), all.len()),
        Err(e) => client_error(e, all.iter().all(|v| v.trim().parse::<i64>().is_ok())),
    }
}

/// A JSON push body for `/herald/push/keys` and `/herald/push/mids`.
fn json_push(data: &[u8]) {
    for keys in [true, false] {
        for (max_recipients, max_msg) in [(0, 4096), (2, 16)] {
            match check_json_push(data, keys, max_recipients, max_msg) {
                Ok((op, n, msg)) => {
                    assert!(msg.len() <= max_msg);
                    assert!(max_recipients == 0 || n <= max_recipients);
                    assert!(!keys || n > 0, "a key push without keys");
                    let v: Value = serde_json::from_slice(data).expect("an accepted body is JSON");
                    let declared = v.get("operation").and_then(Value::as_i64).unwrap_or(0);
                    assert_eq!(i64::from(op), declared);
                    let list = v.get(if keys { "keys" } else { "mids" });
                    let count = list.and_then(Value::as_array).map_or(0, Vec::len);
                    assert_eq!(n, count);
                }
                Err(e) => client_error(e, false),
            }
        }
    }
}

/// `e` is answered with a 4xx status; `unexpected` marks a refusal the other
/// getters say should not have happened.
fn client_error(e: ApiError, unexpected: bool) {
    let shown = format!("{e:?}");
    assert!(!unexpected, "refused: {shown}");
    let status = e.into_response().status();
    assert!(status.is_client_error(), "{status} for {shown}");
}
