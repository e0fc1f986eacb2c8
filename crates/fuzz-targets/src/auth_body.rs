//! The auth token: the JSON body of an op-7 frame.

use herald_proto::AuthToken;
use serde_json::json;

/// Parses `data` as an auth body; a token it accepts, written again in either of
/// the forms goim's clients send, parses to the same token.
pub fn auth_body(data: &[u8]) {
    let token = match AuthToken::parse(data) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let numbers = json!({
        "mid": token.mid,
        "key": token.key,
        "room_id": token.room_id,
        "platform": token.platform,
        "accepts": token.accepts,
    });
    let again = AuthToken::parse(numbers.to_string().as_bytes());
    assert_eq!(again.ok().as_ref(), Some(&token), "round trip");
    // goim's browser demo sends numbers as strings.
    let accepts: Vec<String> = token.accepts.iter().map(i32::to_string).collect();
    let strings = json!({"mid": token.mid.to_string(), "accepts": accepts});
    let again = AuthToken::parse(strings.to_string().as_bytes()).expect("numeric strings");
    assert_eq!((again.mid, &again.accepts), (token.mid, &token.accepts));
}
