//! What the credentials grant and what the client's auth body may still say.
//!
//! In `jwt` and `webhook` modes the trusted party (the token's issuer, the backend)
//! decides who the client is and what it may do; the op-7 auth body is the client's
//! own word and is believed only inside that grant. [`resolve`] applies the rules
//! shared by both modes:
//!
//! - `mid`: the granted one. A body `mid` that differs is refused.
//! - `key`: the granted one. A body `key` that differs is refused. Without a granted
//!   key the body's is ignored and logic generates one, so that nobody can take over
//!   another user's connection key.
//! - room: the body's `room_id` if the grant allows it (refused otherwise), else the
//!   granted initial room.
//! - accepts: the body's list intersected with the granted ops (the granted list
//!   when the body names none); the body's list when no ops are granted.
//! - grant: the rooms and ops granted (absent = any) and the expiry.

use serde::de::{self, Deserializer};
use serde::Deserialize;

use herald_rpc::{Grant, RpcResult};

use super::refused;
use crate::Identity;

/// The auth body of a client in `jwt` or `webhook` mode: what it asks for.
///
/// A field that is absent, `null` or empty states nothing. Numbers may be JSON
/// numbers or numeric strings, as goim's clients send them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthBody {
    /// The signed token (`jwt` mode).
    #[serde(default, deserialize_with = "opt_string")]
    pub token: Option<String>,
    /// The member id the client claims.
    #[serde(default, deserialize_with = "opt_int")]
    pub mid: Option<i64>,
    /// The connection key the client asks for.
    #[serde(default, deserialize_with = "opt_string")]
    pub key: Option<String>,
    /// The room the client asks to join at once.
    #[serde(default, deserialize_with = "opt_string")]
    pub room_id: Option<String>,
    /// The ops the client asks to accept.
    #[serde(default, deserialize_with = "opt_ints")]
    pub accepts: Option<Vec<i32>>,
}

impl AuthBody {
    /// Parses an op-7 body. An empty body states nothing (a WebSocket client may
    /// carry its token in the URL instead). The error never quotes the body, which
    /// may hold a token.
    pub fn parse(body: &[u8]) -> RpcResult<AuthBody> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(AuthBody::default());
        }
        serde_json::from_slice(body).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "lacks a field or has one of the wrong type",
                _ => "is not a JSON object",
            };
            refused(format!(
                "the auth body {what} (line {} column {})",
                e.line(),
                e.column()
            ))
        })
    }
}

/// What the trusted party decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// The member id.
    pub mid: i64,
    /// The connection key; `None` = logic generates one.
    pub key: Option<String>,
    /// The room to join when the body names none.
    pub room: Option<String>,
    /// Rooms the connection may be in (exact keys or `prefix*`); `None` = any.
    pub rooms: Option<Vec<String>>,
    /// Ops the connection may accept; `None` = any.
    pub ops: Option<Vec<i32>>,
    /// Unix seconds the credentials expire; 0 = never.
    pub expires_at: i64,
}

/// The identity of a client whose auth body is `body` and whose credentials
/// granted `granted`, or a refusal saying which rule the body broke.
pub fn resolve(body: AuthBody, granted: Granted) -> RpcResult<Identity> {
    if body.mid.is_some_and(|m| m != granted.mid) {
        return Err(refused(
            "the auth body's mid differs from the one in the credentials",
        ));
    }
    let key = match (granted.key.filter(|k| !k.is_empty()), body.key) {
        (Some(g), Some(b)) if g != b => {
            return Err(refused(
                "the auth body's key differs from the one in the credentials",
            ))
        }
        (Some(g), _) => g,
        // Ignored on purpose: a key the credentials do not bind could be someone
        // else's.
        (None, _) => String::new(),
    };
    let grant = Grant {
        any_room: granted.rooms.is_none(),
        rooms: granted.rooms.unwrap_or_default(),
        any_op: granted.ops.is_none(),
        ops: granted.ops.clone().unwrap_or_default(),
        expires_at: granted.expires_at,
        context: Default::default(),
    };
    let room_id = match body.room_id {
        Some(r) if !grant.allows_room(&r) => {
            return Err(refused(
                "the auth body's room_id is outside the rooms the credentials allow",
            ))
        }
        Some(r) => r,
        None => granted.room.unwrap_or_default(),
    };
    let accepts = match (body.accepts, granted.ops) {
        (Some(asked), Some(allowed)) => asked.into_iter().filter(|o| allowed.contains(o)).collect(),
        (None, Some(allowed)) => allowed,
        (Some(asked), None) => asked,
        (None, None) => Vec::new(),
    };
    Ok(Identity {
        mid: granted.mid,
        key,
        room_id,
        accepts,
        grant: Some(grant),
        answered: false,
    })
}

/// A JSON integer or a string holding one (goim's clients send both).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum IntOrString {
    Int(i64),
    Float(f64),
    Str(String),
}

impl IntOrString {
    /// The integer; `Ok(None)` for an empty string.
    pub(crate) fn value<E: de::Error>(self) -> Result<Option<i64>, E> {
        match self {
            IntOrString::Int(n) => Ok(Some(n)),
            IntOrString::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
            IntOrString::Float(_) => Err(E::custom("a number is not an integer")),
            IntOrString::Str(s) if s.trim().is_empty() => Ok(None),
            IntOrString::Str(s) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| E::custom("a string is not an integer")),
        }
    }
}

pub(crate) fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<IntOrString>::deserialize(d)? {
        None => Ok(None),
        Some(v) => v.value(),
    }
}

pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

fn int_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    let Some(items) = Option::<Vec<IntOrString>>::deserialize(d)? else {
        return Ok(None);
    };
    let mut ops = Vec::with_capacity(items.len());
    for item in items {
        if let Some(n) = item.value::<D::Error>()? {
            ops.push(i32::try_from(n).map_err(|_| de::Error::custom("an op is out of range"))?);
        }
    }
    Ok(Some(ops))
}

/// A body's op list; an empty list states nothing.
pub(crate) fn opt_ints<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    Ok(int_list(d)?.filter(|o| !o.is_empty()))
}

/// A granted op list: unlike a body's, an empty list grants no op at all.
pub(crate) fn granted_ints<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    int_list(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_rpc::ErrorKind;

    fn body(json: &str) -> AuthBody {
        AuthBody::parse(json.as_bytes()).unwrap()
    }

    fn granted() -> Granted {
        Granted {
            mid: 42,
            ..Default::default()
        }
    }

    fn refusal(r: RpcResult<Identity>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        e.message
    }

    #[test]
    fn body_parses_goim_shapes_and_states_nothing_when_empty() {
        let b = body(
            r#"{"token":"t","mid":"42","key":"k","room_id":"live://1","accepts":["1000",1001],"platform":"web"}"#,
        );
        assert_eq!(b.token.as_deref(), Some("t"));
        assert_eq!(b.mid, Some(42));
        assert_eq!(b.accepts, Some(vec![1000, 1001]));
        assert_eq!(body(""), AuthBody::default());
        assert_eq!(
            body(r#"{"mid":null,"key":"","room_id":null,"accepts":[]}"#),
            AuthBody::default()
        );
    }

    #[test]
    fn body_errors_do_not_quote_the_body() {
        let e = AuthBody::parse(br#"{"token":"eyJsecret","mid":"abc"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        assert!(e.message.contains("wrong type"), "{}", e.message);
        assert!(!e.message.contains("eyJsecret") && !e.message.contains("abc"));
        let e = AuthBody::parse(b"eyJsecret").unwrap_err();
        assert!(e.message.contains("not a JSON object"), "{}", e.message);
        assert!(!e.message.contains("eyJsecret"));
    }

    #[test]
    fn mid_comes_from_the_grant_and_a_different_body_mid_is_refused() {
        let id = resolve(body(r#"{"mid":42}"#), granted()).unwrap();
        assert_eq!(id.mid, 42);
        assert_eq!(resolve(body("{}"), granted()).unwrap().mid, 42);
        let m = refusal(resolve(body(r#"{"mid":7}"#), granted()));
        assert!(m.contains("mid"), "{m}");
    }

    #[test]
    fn key_is_granted_or_generated_never_taken_from_the_body_alone() {
        // No granted key: the body's is ignored (logic generates one).
        let id = resolve(body(r#"{"key":"someone-elses"}"#), granted()).unwrap();
        assert_eq!(id.key, "");
        let g = Granted {
            key: Some("k1".into()),
            ..granted()
        };
        assert_eq!(resolve(body("{}"), g.clone()).unwrap().key, "k1");
        assert_eq!(
            resolve(body(r#"{"key":"k1"}"#), g.clone()).unwrap().key,
            "k1"
        );
        let m = refusal(resolve(body(r#"{"key":"k2"}"#), g));
        assert!(m.contains("key"), "{m}");
    }

    #[test]
    fn room_must_be_inside_the_grant() {
        let g = Granted {
            room: Some("live://lobby".into()),
            rooms: Some(vec!["live://lobby".into(), "chat://team-*".into()]),
            ..granted()
        };
        let id = resolve(body("{}"), g.clone()).unwrap();
        assert_eq!(id.room_id, "live://lobby");
        let grant = id.grant.unwrap();
        assert!(!grant.any_room && grant.allows_room("chat://team-7"));
        let id = resolve(body(r#"{"room_id":"chat://team-7"}"#), g.clone()).unwrap();
        assert_eq!(id.room_id, "chat://team-7");
        let m = refusal(resolve(body(r#"{"room_id":"live://other"}"#), g));
        assert!(m.contains("room"), "{m}");
        // No rooms granted: any room, the body's choice stands.
        let id = resolve(body(r#"{"room_id":"live://other"}"#), granted()).unwrap();
        assert_eq!(id.room_id, "live://other");
        assert!(id.grant.unwrap().any_room);
    }

    #[test]
    fn accepts_are_the_intersection() {
        let g = Granted {
            ops: Some(vec![1000, 1001]),
            ..granted()
        };
        let id = resolve(body(r#"{"accepts":[1001,1002]}"#), g.clone()).unwrap();
        assert_eq!(id.accepts, vec![1001]);
        let grant = id.grant.unwrap();
        assert!(!grant.any_op && grant.allows_op(1000) && !grant.allows_op(1002));
        assert_eq!(
            resolve(body("{}"), g.clone()).unwrap().accepts,
            vec![1000, 1001]
        );
        // Nothing in common: the connection accepts nothing (not everything).
        assert!(resolve(body(r#"{"accepts":[5]}"#), g)
            .unwrap()
            .accepts
            .is_empty());
        // No ops granted: the body's list, any op later.
        let id = resolve(body(r#"{"accepts":[5,6]}"#), granted()).unwrap();
        assert_eq!(id.accepts, vec![5, 6]);
        assert!(id.grant.unwrap().any_op);
    }

    #[test]
    fn expiry_travels_in_the_grant() {
        let g = Granted {
            expires_at: 1_900_000_000,
            ..granted()
        };
        assert_eq!(
            resolve(body("{}"), g).unwrap().grant.unwrap().expires_at,
            1_900_000_000
        );
    }
}
