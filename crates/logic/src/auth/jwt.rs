//! `jwt` mode: a signed JSON Web Token is the client's credentials.
//!
//! The token travels in the auth body's `token` field; a WebSocket client may put it
//! in the `token` query parameter of its URL instead (the body wins when both are
//! present). Only the compact JWS form is accepted, signed with an algorithm from
//! the configured allow-list (the token's header never widens it) and verified with
//! a key of that algorithm's family ([`super::keys`]). The signature is checked
//! before anything in the payload is read. The claims then give the identity and
//! the grant ([`super::claims`]):
//!
//! | claim | meaning |
//! |---|---|
//! | `sub` | member id (integer or numeric string), required |
//! | `key` | connection key; absent = generated |
//! | `room` | initial room when the body names none |
//! | `rooms` | rooms allowed (exact or `prefix*`); absent = any |
//! | `accepts` | ops allowed; absent = any |
//! | `exp`, `nbf` | validity (with `leeway`); `exp` + `leeway` is the grant's expiry |
//! | `iss`, `aud` | checked when `issuer` / `audience` are configured |

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_rpc::{ConnectReq, RpcError, RpcResult};
use herald_tls::rustls::pki_types::pem::PemObject;
use herald_tls::rustls::pki_types::SubjectPublicKeyInfoDer;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::claims::{self, granted_ints, opt_int, opt_string, AuthBody, Granted};
use super::jwks::Jwks;
use super::keys::{Alg, Family, VerifyError, VerifyKey};
use super::{refused, AuthSetupError, JwtConfig};
use crate::{Authenticator, Identity};

/// Where verification keys come from.
enum KeySource {
    /// One key from the configuration.
    Static(VerifyKey),
    /// A key set fetched from a URL.
    Jwks(Arc<Jwks>),
}

/// Verifies connect tokens.
pub struct JwtAuthenticator {
    /// The algorithms a token may use.
    algorithms: Vec<Alg>,
    keys: KeySource,
    /// Required `aud` entry, if any.
    audience: Option<String>,
    /// Required `iss`, if any.
    issuer: Option<String>,
    /// Clock skew tolerated, seconds.
    leeway: i64,
    require_exp: bool,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions: none is understood, so any makes the token invalid
    /// (RFC 7515 §4.1.11).
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "opt_int")]
    sub: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    key: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    room: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "granted_ints")]
    accepts: Option<Vec<i32>>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
}

fn config_err(m: impl Into<String>) -> AuthSetupError {
    AuthSetupError::Config(m.into())
}

fn file_err(what: &'static str, path: &std::path::Path, reason: impl ToString) -> AuthSetupError {
    AuthSetupError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl JwtAuthenticator {
    /// Validates `cfg`, loads its key (fetching a key set, whose refresh task runs
    /// on `tracker` until `stop`) and logs what is in force.
    pub async fn start(
        cfg: &JwtConfig,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<JwtAuthenticator, AuthSetupError> {
        let (keys, family, source) = load_keys(cfg, stop, tracker).await?;
        let algorithms = algorithms(&cfg.algorithms, family)?;
        let names: Vec<&str> = algorithms.iter().map(|a| a.name()).collect();
        info!(mode = "jwt", keys = %source, algorithms = ?names, audience = %cfg.audience,
            issuer = %cfg.issuer, "connect authentication: signed tokens");
        Ok(JwtAuthenticator {
            algorithms,
            keys,
            audience: Some(cfg.audience.clone()).filter(|a| !a.is_empty()),
            issuer: Some(cfg.issuer.clone()).filter(|i| !i.is_empty()),
            leeway: cfg.leeway.as_secs() as i64,
            require_exp: cfg.require_exp,
        })
    }

    /// Checks `token` and returns what its claims grant.
    pub async fn verify(&self, token: &str) -> RpcResult<Granted> {
        let (signing_input, sig_b64) = token
            .rsplit_once('.')
            .ok_or_else(|| refused("the token is not a JWS in compact form"))?;
        let (header_b64, payload_b64) = signing_input
            .split_once('.')
            .filter(|(_, p)| !p.contains('.'))
            .ok_or_else(|| refused("the token is not a JWS in compact form"))?;
        let header: Header = decode_json(header_b64, "header")?;
        if header.crit.is_some() {
            return Err(refused("the token has critical header extensions"));
        }
        let alg = match Alg::parse(&header.alg) {
            Some(a) if self.algorithms.contains(&a) => a,
            Some(a) => return Err(refused(format!("algorithm {} is not allowed", a.name()))),
            None if header.alg.eq_ignore_ascii_case("none") => {
                return Err(refused("unsigned tokens (alg none) are refused"))
            }
            None => return Err(refused("the token's algorithm is unknown")),
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| refused("the token's signature is not base64url"))?;
        self.check_signature(alg, header.kid.as_deref(), signing_input.as_bytes(), &sig)
            .await?;
        let claims: Claims = decode_json(payload_b64, "claims")?;
        self.validate(claims)
    }

    async fn check_signature(
        &self,
        alg: Alg,
        kid: Option<&str>,
        message: &[u8],
        sig: &[u8],
    ) -> RpcResult<()> {
        let jwks = match &self.keys {
            KeySource::Static(key) => return signature_result(key.verify(alg, message, sig)),
            KeySource::Jwks(jwks) => jwks,
        };
        let mut refreshed = false;
        loop {
            let Some(keys) = jwks.keys() else {
                if refreshed {
                    return Err(RpcError::unavailable(
                        "no signing keys loaded yet (the JWKS endpoint has not answered)",
                    ));
                }
                jwks.refresh_early().await;
                refreshed = true;
                continue;
            };
            let mut candidates = keys.iter().filter(|k| {
                k.key.family() == alg.family()
                    && k.alg.is_none_or(|a| a == alg)
                    && (kid.is_none() || k.kid.as_deref() == kid)
            });
            let Some(first) = candidates.next() else {
                if refreshed {
                    return Err(refused(match kid {
                        Some(_) => "the key set has no key for the token's kid and algorithm",
                        None => "the key set has no key for the token's algorithm",
                    }));
                }
                // The issuer may have rotated its keys since the last fetch.
                jwks.refresh_early().await;
                refreshed = true;
                continue;
            };
            // Without a kid every fitting key is tried; key sets are small.
            let mut result = first.key.verify(alg, message, sig);
            for k in candidates {
                if result.is_ok() {
                    break;
                }
                result = k.key.verify(alg, message, sig);
            }
            return signature_result(result);
        }
    }

    fn validate(&self, c: Claims) -> RpcResult<Granted> {
        let now = unix_now();
        let exp = c.exp.map(|e| e.floor() as i64);
        match exp {
            None if self.require_exp => return Err(refused("the token has no exp")),
            Some(e) if now > e.saturating_add(self.leeway) => {
                return Err(refused("the token has expired"))
            }
            _ => {}
        }
        if c.nbf
            .is_some_and(|n| now.saturating_add(self.leeway) < n.floor() as i64)
        {
            return Err(refused("the token is not valid yet (nbf)"));
        }
        if let Some(want) = &self.issuer {
            if c.iss.as_ref() != Some(want) {
                return Err(refused("the token's issuer is not the configured one"));
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &c.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(list)) => list.contains(want),
                None => false,
            };
            if !ok {
                return Err(refused(
                    "the token's audience does not include the configured one",
                ));
            }
        }
        let mid = c
            .sub
            .ok_or_else(|| refused("the token has no sub (member id)"))?;
        Ok(Granted {
            mid,
            key: c.key,
            room: c.room,
            rooms: c.rooms,
            ops: c.accepts,
            // The same tolerance as at the check, so a token admitted within the
            // leeway is not closed the moment it starts.
            expires_at: exp.map_or(0, |e| e.saturating_add(self.leeway)),
        })
    }
}

/// The configured key source: the key, its family (`None` for a key set) and a
/// description for the start log.
async fn load_keys(
    cfg: &JwtConfig,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(KeySource, Option<Family>, String), AuthSetupError> {
    let sources = [
        !cfg.secret.is_empty(),
        !cfg.secret_file.as_os_str().is_empty(),
        !cfg.public_key_file.as_os_str().is_empty(),
        !cfg.jwks_url.is_empty(),
    ];
    match sources.iter().filter(|s| **s).count() {
        0 => {
            return Err(config_err(
                "auth.mode = jwt needs auth.jwt.secret, secret_file, public_key_file or jwks_url",
            ))
        }
        1 => {}
        _ => {
            return Err(config_err(
                "auth.jwt: set only one of secret, secret_file, public_key_file and jwks_url",
            ))
        }
    }
    Ok(if !cfg.secret.is_empty() {
        let key = VerifyKey::hmac(cfg.secret.as_bytes())
            .map_err(|e| config_err(format!("auth.jwt.secret: {e}")))?;
        (
            KeySource::Static(key),
            Some(Family::Hmac),
            "secret".to_string(),
        )
    } else if !cfg.secret_file.as_os_str().is_empty() {
        let path = &cfg.secret_file;
        let raw = std::fs::read(path).map_err(|e| file_err("auth.jwt.secret_file", path, e))?;
        let secret = raw
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(&raw);
        let key = VerifyKey::hmac(secret).map_err(|e| file_err("auth.jwt.secret_file", path, e))?;
        (
            KeySource::Static(key),
            Some(Family::Hmac),
            format!("secret_file {}", path.display()),
        )
    } else if !cfg.public_key_file.as_os_str().is_empty() {
        let path = &cfg.public_key_file;
        let der = SubjectPublicKeyInfoDer::from_pem_file(path).map_err(|e| {
            file_err(
                "auth.jwt.public_key_file",
                path,
                format!("no PEM public key (BEGIN PUBLIC KEY) in it: {e}"),
            )
        })?;
        let key = VerifyKey::from_spki(der.as_ref())
            .map_err(|e| file_err("auth.jwt.public_key_file", path, e))?;
        let family = key.family();
        (
            KeySource::Static(key),
            Some(family),
            format!("public_key_file {}", path.display()),
        )
    } else {
        // Checked before the key set task starts, so a refused configuration
        // leaves nothing running.
        algorithms(&cfg.algorithms, None)?;
        let jwks = Jwks::start(cfg, stop, tracker).await?;
        (
            KeySource::Jwks(jwks),
            None,
            format!("jwks_url {}", cfg.jwks_url),
        )
    })
}

/// The allow-list in force: the configured one, each fitting the key, or the
/// natural default for the key's family.
fn algorithms(names: &[String], family: Option<Family>) -> Result<Vec<Alg>, AuthSetupError> {
    if names.is_empty() {
        return Ok(match family {
            Some(Family::Hmac) => vec![Alg::HS256],
            Some(Family::Rsa) => vec![Alg::RS256],
            Some(Family::P256) => vec![Alg::ES256],
            Some(Family::P384) => vec![Alg::ES384],
            None => vec![Alg::RS256, Alg::ES256],
        });
    }
    let mut algs = Vec::with_capacity(names.len());
    for name in names {
        let alg = Alg::parse(name).ok_or_else(|| {
            if name.eq_ignore_ascii_case("none") {
                config_err("auth.jwt.algorithms: unsigned tokens (none) are never accepted")
            } else {
                let known: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
                config_err(format!(
                    "auth.jwt.algorithms: unknown algorithm {name:?} (known: {})",
                    known.join(", ")
                ))
            }
        })?;
        if let Some(f) = family {
            if alg.family() != f {
                return Err(config_err(format!(
                    "auth.jwt.algorithms lists {name}, which does not fit the configured {} key",
                    match f {
                        Family::Hmac => "HMAC secret",
                        Family::Rsa => "RSA",
                        Family::P256 => "P-256",
                        Family::P384 => "P-384",
                    }
                )));
            }
        } else if alg.family() == Family::Hmac {
            return Err(config_err(format!(
                "auth.jwt.algorithms lists {name}: a key set (jwks_url) holds public keys only"
            )));
        }
        algs.push(alg);
    }
    Ok(algs)
}

fn signature_result(r: Result<(), VerifyError>) -> RpcResult<()> {
    r.map_err(|e| match e {
        VerifyError::WrongFamily => refused("the token's algorithm does not fit the key"),
        VerifyError::BadSignature => refused("the token's signature is invalid"),
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> RpcResult<T> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| refused(format!("the token's {what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        refused(format!(
            "the token's {what} {} (column {})",
            match e.classify() {
                serde_json::error::Category::Data => "lacks a field or has one of the wrong type",
                _ => "is not a JSON object",
            },
            e.column()
        ))
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The `token` query parameter of a WebSocket client's request target.
fn query_token(req: &ConnectReq) -> Option<String> {
    let path = req.headers.get(":path")?;
    let (_, query) = path.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, req: &ConnectReq) -> RpcResult<Identity> {
        let mut body = AuthBody::parse(&req.token)?;
        let token = match body.token.take() {
            Some(t) => t,
            None => query_token(req)
                .ok_or_else(|| refused("no token: send it in the auth body's \"token\" field"))?,
        };
        let granted = self.verify(&token).await?;
        claims::resolve(body, granted)
    }

    fn mode(&self) -> &'static str {
        "jwt"
    }
}
