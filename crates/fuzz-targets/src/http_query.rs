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
    let mut refusals = Vec::new();
    query(&String::from_utf8_lossy(data), &mut refusals);
    json_push(data, &mut refusals);
    // Each refusal is answered with a 4xx status. Answering is not free, so one
    // refusal per input, a different one from input to input, is answered.
    if !refusals.is_empty() {
        let e = refusals.swap_remove(data.len() % refusals.len());
        let shown = format!("{e:?}");
        let status = e.into_response().status();
        assert!(status.is_client_error(), "{status} for {shown}");
    }
}

fn query(raw: &str, refusals: &mut Vec<ApiError>) {
    let p = Params::parse(Some(raw.to_string()));
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let found = pairs.iter().map(|(k, _)| k.as_str()).take(MORE_NAMES);
    let names: Vec<&str> = NAMES.iter().copied().chain(found).collect();
    for name in &names {
        getters(&p, name, refusals);
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

/// The typed getters agree with each other; their refusals go to `refusals`.
fn getters(p: &Params, name: &str, refusals: &mut Vec<ApiError>) {
    let one = p.one(name);
    assert_eq!(p.has(name), one.is_some());
    let all = p.all(name);
    assert!(all.iter().all(|v| !v.is_empty()));
    match p.text(name) {
        Ok(t) => assert_eq!((Some(t), t.is_empty()), (one, false)),
        Err(e) => {
            assert!(one.is_none_or(str::is_empty), "text refused {one:?}");
            refusals.push(e);
        }
    }
    let int = p.int::<i64>(name);
    match (&int, one) {
        (Ok(v), None | Some("")) => assert_eq!(*v, 0),
        (Ok(v), Some(s)) => assert_eq!(s.trim().parse::<i64>().ok(), Some(*v)),
        (Err(_), Some(s)) => assert!(s.trim().parse::<i64>().is_err(), "int refused {s:?}"),
        (Err(_), None) => panic!("int refused an absent {name}"),
    }
    let int = int.ok();
    match p.required_int::<i64>(name) {
        Ok(v) => assert_eq!((v != 0, int), (true, Some(v))),
        Err(e) => {
            assert!(int.is_none_or(|v| v == 0), "required_int refused {int:?}");
            refusals.push(e);
        }
    }
    if let Err(e) = p.int::<i32>(name) {
        refusals.push(e);
    }
    match p.ints::<i64>(name) {
        Ok(v) => assert_eq!(v.len(), all.len()),
        Err(e) => {
            let parse = |v: &String| v.trim().parse::<i64>().is_ok();
            assert!(!all.iter().all(parse), "ints refused {all:?}");
            refusals.push(e);
        }
    }
}

/// A JSON push body for `/herald/push/keys` and `/herald/push/mids`.
fn json_push(data: &[u8], refusals: &mut Vec<ApiError>) {
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
                Err(e) => refusals.push(e),
            }
        }
    }
}
