//! The push endpoints. goim's `/goim/push/*` take recipients and options in the
//! query and the message as the body; herald's `/herald/push/keys` and
//! `/herald/push/mids` take everything in a JSON body, for recipient lists longer
//! than a URI holds. Both build the same [`Recipients`] and go through the same
//! checks and the same logic calls.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;

use super::params::Params;
use super::{ok, ApiError, ApiState};

/// Reads a request body of at most `limit` bytes.
async fn read_body(
    limit: usize,
    what: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            -400,
            format!("{what} exceeds {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// Who a key or mid push is for.
enum Recipients {
    Keys(Vec<String>),
    Mids(Vec<i64>),
}

impl Recipients {
    fn what(&self) -> &'static str {
        match self {
            Recipients::Keys(_) => "keys",
            Recipients::Mids(_) => "mids",
        }
    }

    fn len(&self) -> usize {
        match self {
            Recipients::Keys(k) => k.len(),
            Recipients::Mids(m) => m.len(),
        }
    }

    /// At most `limits.http.max_recipients` (0 = no limit). No recipient is allowed
    /// here: whether a request may name none is the endpoint's rule (see
    /// [`keys_required`]).
    fn check(&self, max: usize) -> Result<(), ApiError> {
        let n = self.len();
        if max > 0 && n > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                -400,
                format!(
                    "{n} {} in one push; the limit is {max} (limits.http.max_recipients)",
                    self.what()
                ),
            ));
        }
        Ok(())
    }

    async fn send(self, st: &ApiState, op: i32, msg: Bytes) -> Result<Response, ApiError> {
        match self {
            Recipients::Keys(keys) => st.logic.push_keys(op, &keys, msg).await?,
            Recipients::Mids(mids) => st.logic.push_mids(op, &mids, msg).await?,
        }
        Ok(ok())
    }
}

/// A key push must name keys, as in goim, where a push without keys fails (its
/// Redis `MGET` gets no argument) with code −400. A mid push without mids succeeds
/// and pushes nothing, as goim's does.
fn keys_required() -> ApiError {
    ApiError::bad_request("keys is required")
}

/// A goim key or mid push: parameters are checked before the body is read.
async fn goim_push(
    st: &ApiState,
    op: i32,
    to: Recipients,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    to.check(st.max_recipients)?;
    let limit = st.logic.config().max_push_body;
    let msg = read_body(limit, "push body", headers, body).await?;
    to.send(st, op, msg).await
}

pub(super) async fn push_keys(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.int("operation")?;
    // goim reads `keys=` as one empty key, which it skips: the push succeeds with
    // nothing to send. Only a request without the parameter has no keys.
    if !p.has("keys") {
        return Err(keys_required());
    }
    goim_push(&st, op, Recipients::Keys(p.all("keys")), &headers, body).await
}

pub(super) async fn push_mids(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.int("operation")?;
    let mids = p.ints::<i64>("mids")?;
    goim_push(&st, op, Recipients::Mids(mids), &headers, body).await
}

pub(super) async fn push_room(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.required_int("operation")?;
    let typ = p.text("type")?.to_string();
    let room = p.text("room")?.to_string();
    let limit = st.logic.config().max_push_body;
    let msg = read_body(limit, "push body", &headers, body).await?;
    st.logic.push_room(op, &typ, &room, msg).await?;
    Ok(ok())
}

pub(super) async fn push_all(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.required_int("operation")?;
    // 0 or negative: no limit, as in goim.
    let speed: i32 = p.int("speed")?;
    let limit = st.logic.config().max_push_body;
    let msg = read_body(limit, "push body", &headers, body).await?;
    st.logic.push_all(op, speed, msg).await?;
    Ok(ok())
}

/// The body of `POST /herald/push/keys` and `/herald/push/mids`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPush {
    /// Op of the pushed frame (goim's `operation`; 0 when absent).
    #[serde(default)]
    operation: i32,
    keys: Option<Vec<String>>,
    mids: Option<Vec<i64>>,
    /// The message as text (sent as its UTF-8 bytes).
    msg: Option<String>,
    /// The message as standard base64, for binary messages.
    msg_base64: Option<String>,
}

impl JsonPush {
    fn message(&mut self) -> Result<Bytes, ApiError> {
        match (self.msg.take(), self.msg_base64.take()) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "give the message as msg or as msg_base64, not both",
            )),
            (Some(text), None) => Ok(Bytes::from(text)),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("msg_base64 is not base64: {e}"))),
            // goim allows an empty push body; so does its JSON counterpart.
            (None, None) => Ok(Bytes::new()),
        }
    }
}

/// Which list a JSON push endpoint takes.
#[derive(Clone, Copy, PartialEq)]
enum JsonKind {
    Keys,
    Mids,
}

async fn json_push(
    st: &ApiState,
    kind: JsonKind,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max_msg = st.logic.config().max_push_body;
    // Room for a base64 message of the largest size plus a long recipient list.
    let raw = read_body(max_msg.saturating_mul(2), "JSON push body", headers, body).await?;
    let (op, to, msg) = read_json_push(&raw, kind, st.max_recipients, max_msg)?;
    to.send(st, op, msg).await
}

/// A JSON push body as its op, recipients and message, with every check that
/// needs no logic: the recipients the endpoint takes, at most `max_recipients`
/// of them (0 = no limit), a message of at most `max_msg` bytes.
fn read_json_push(
    raw: &[u8],
    kind: JsonKind,
    max_recipients: usize,
    max_msg: usize,
) -> Result<(i32, Recipients, Bytes), ApiError> {
    let mut req: JsonPush = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON push: {e}")))?;
    let to = match (kind, req.keys.take(), req.mids.take()) {
        (JsonKind::Keys, Some(keys), None) => {
            if keys.is_empty() {
                return Err(keys_required());
            }
            if let Some(i) = keys.iter().position(|k| k.is_empty()) {
                return Err(ApiError::bad_request(format!("keys[{i}] is empty")));
            }
            Recipients::Keys(keys)
        }
        (JsonKind::Mids, None, Some(mids)) => Recipients::Mids(mids),
        (JsonKind::Keys, _, Some(_)) => {
            return Err(ApiError::bad_request(
                "mids belong in POST /herald/push/mids",
            ))
        }
        (JsonKind::Mids, Some(_), _) => {
            return Err(ApiError::bad_request(
                "keys belong in POST /herald/push/keys",
            ))
        }
        (JsonKind::Keys, None, None) => return Err(keys_required()),
        (JsonKind::Mids, None, None) => Recipients::Mids(Vec::new()),
    };
    to.check(max_recipients)?;
    let msg = req.message()?;
    if msg.len() > max_msg {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            -400,
            format!("push message exceeds {max_msg} bytes"),
        ));
    }
    Ok((req.operation, to, msg))
}

/// A `POST /herald/push/keys` body (`keys`) or `/herald/push/mids` body read and
/// checked exactly as the endpoint does before it calls logic: the op, how many
/// recipients, and the message, or the endpoint's error. Needs no server (for
/// fuzzing and tests).
pub fn check_json_push(
    body: &[u8],
    keys: bool,
    max_recipients: usize,
    max_msg: usize,
) -> Result<(i32, usize, Bytes), ApiError> {
    let kind = if keys { JsonKind::Keys } else { JsonKind::Mids };
    let (op, to, msg) = read_json_push(body, kind, max_recipients, max_msg)?;
    Ok((op, to.len(), msg))
}

pub(super) async fn json_push_keys(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    json_push(&st, JsonKind::Keys, &headers, body).await
}

pub(super) async fn json_push_mids(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    json_push(&st, JsonKind::Mids, &headers, body).await
}
