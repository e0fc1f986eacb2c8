//! goim's query parameters: lists as repeated keys (`mids=1&mids=2`), integers where
//! an empty value counts as absent and a required integer must be non-zero.

use std::str::FromStr;

use super::ApiError;

/// The HTTP API's query parser: parameters with repeated keys, read by the typed
/// getters every endpoint uses.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string (`None`: the URI has no query).
    pub fn parse(raw: Option<String>) -> Params {
        Params(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`, possibly empty.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `name` is given at all, even with an empty value (`keys=`).
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// Every non-empty value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The first value of `name`, which must be non-empty.
    pub fn text(&self, name: &str) -> Result<&str, ApiError> {
        match self.one(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::bad_request(format!("{name} is required"))),
        }
    }

    /// The first value of `name` as an integer; absent or empty is 0.
    pub fn int<T: FromStr + Default>(&self, name: &str) -> Result<T, ApiError> {
        match self.one(name) {
            None | Some("") => Ok(T::default()),
            Some(v) => v.trim().parse().map_err(|_| {
                ApiError::bad_request(format!("{name} must be an integer, got {v:?}"))
            }),
        }
    }

    /// A required integer; like goim, zero counts as missing.
    pub fn required_int<T: FromStr + Default + PartialEq>(
        &self,
        name: &str,
    ) -> Result<T, ApiError> {
        let v: T = self.int(name)?;
        if v == T::default() {
            return Err(ApiError::bad_request(format!(
                "{name} is required and must be non-zero"
            )));
        }
        Ok(v)
    }

    /// Every non-empty value of `name` as an integer (a recipient list such as
    /// `mids=1&mids=2`).
    pub fn ints<T: FromStr>(&self, name: &str) -> Result<Vec<T>, ApiError> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| {
                v.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!("{name} must be integers, got {v:?}"))
                })
            })
            .collect()
    }
}
