//! The auth token: the JSON body of an op-7 frame.

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// What a client claims when it authenticates.
///
/// Field names are goim's. `mid` is accepted as a JSON number or as a numeric string
/// (goim's browser demo sends a string); `accepts` elements likewise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthToken {
    /// Member (user) id; 0 means anonymous.
    #[serde(default, deserialize_with = "int_or_string")]
    pub mid: i64,
    /// Connection key; empty asks the server to generate one.
    #[serde(default, deserialize_with = "string_or_null")]
    pub key: String,
    /// Initial room key (`type://id`); empty for none.
    #[serde(default, deserialize_with = "string_or_null")]
    pub room_id: String,
    /// Client platform, e.g. `web`, `ios`.
    #[serde(default, deserialize_with = "string_or_null")]
    pub platform: String,
    /// Ops this connection accepts for key, mid and broadcast pushes.
    #[serde(default, deserialize_with = "int_list")]
    pub accepts: Vec<i32>,
}

/// Why an auth body was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid auth token: {0}")]
pub struct AuthError(#[from] serde_json::Error);

impl AuthToken {
    /// Parses an op-7 body.
    pub fn parse(body: &[u8]) -> Result<AuthToken, AuthError> {
        Ok(serde_json::from_slice(body)?)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Float(f64),
    Str(String),
}

fn to_int<T: TryFrom<i64>, E: de::Error>(v: IntOrString) -> Result<T, E> {
    let n = match v {
        IntOrString::Int(n) => n,
        IntOrString::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
        IntOrString::Float(f) => return Err(E::custom(format!("{f} is not an integer"))),
        IntOrString::Str(s) if s.trim().is_empty() => 0,
        IntOrString::Str(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| E::custom(format!("{s:?} is not an integer")))?,
    };
    T::try_from(n).map_err(|_| E::custom(format!("{n} is out of range")))
}

fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Option::<IntOrString>::deserialize(d)? {
        None => Ok(0),
        Some(v) => to_int(v),
    }
}

fn string_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn int_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    match Option::<Vec<IntOrString>>::deserialize(d)? {
        None => Ok(Vec::new()),
        Some(items) => items.into_iter().map(to_int).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goim_token() {
        let t = AuthToken::parse(
            br#"{"mid":123, "key":"", "room_id":"live://1000", "platform":"web", "accepts":[1000,1001,1002]}"#,
        )
        .unwrap();
        assert_eq!(t.mid, 123);
        assert_eq!(t.room_id, "live://1000");
        assert_eq!(t.platform, "web");
        assert_eq!(t.accepts, vec![1000, 1001, 1002]);
    }

    #[test]
    fn mid_as_string_and_missing_fields() {
        let t = AuthToken::parse(br#"{"mid":"42","key":"k1","accepts":["1000"]}"#).unwrap();
        assert_eq!((t.mid, t.key.as_str()), (42, "k1"));
        assert_eq!(t.accepts, vec![1000]);
        let t = AuthToken::parse(br#"{}"#).unwrap();
        assert_eq!(t, AuthToken::default());
        let t = AuthToken::parse(br#"{"mid":null,"room_id":null,"accepts":null}"#).unwrap();
        assert_eq!(t, AuthToken::default());
    }

    #[test]
    fn rejects_garbage() {
        assert!(AuthToken::parse(b"not json").is_err());
        assert!(AuthToken::parse(br#"{"mid":"abc"}"#).is_err());
        assert!(AuthToken::parse(br#"{"mid":1.5}"#).is_err());
        assert!(AuthToken::parse(br#"{"accepts":[99999999999]}"#).is_err());
        assert!(AuthToken::parse(br#"[1,2]"#).is_err());
    }
}
