//! Test support for the authenticators: token minting with the fixture keys, connect
//! requests, and starting an authenticator from a configuration.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use herald_logic::auth::{self, AuthConfig};
use herald_logic::Authenticator;
use herald_rpc::{ConnectReq, ErrorKind, RpcError};
use herald_tls::rustls::pki_types::pem::PemObject;
use herald_tls::rustls::pki_types::PrivatePkcs8KeyDer;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Something that signs tokens.
pub enum Signer {
    Hmac(Vec<u8>),
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

fn pkcs8(name: &str) -> Vec<u8> {
    PrivatePkcs8KeyDer::from_pem_file(fixture(name))
        .unwrap()
        .secret_pkcs8_der()
        .to_vec()
}

impl Signer {
    pub fn hmac(secret: &str) -> Signer {
        Signer::Hmac(secret.as_bytes().to_vec())
    }

    /// `rsa-a` or `rsa-b`.
    pub fn rsa(name: &str) -> Signer {
        Signer::Rsa(RsaKeyPair::from_pkcs8(&pkcs8(&format!("{name}.key.pem"))).unwrap())
    }

    pub fn ec() -> Signer {
        Signer::Ec(
            EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &pkcs8("ec-a.key.pem"),
                &SystemRandom::new(),
            )
            .unwrap(),
        )
    }

    /// The public key as a JWK with `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Rsa(kp) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(kp) => {
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Signer::Hmac(_) => panic!("no JWK for a secret"),
        }
    }

    fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Hmac(secret) => {
                let algorithm = match alg {
                    "HS384" => ring::hmac::HMAC_SHA384,
                    "HS512" => ring::hmac::HMAC_SHA512,
                    _ => ring::hmac::HMAC_SHA256,
                };
                ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret), input)
                    .as_ref()
                    .to_vec()
            }
            Signer::Rsa(kp) => {
                let padding: &dyn signature::RsaEncoding = match alg {
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(padding, &rng, input, &mut sig).unwrap();
                sig
            }
            Signer::Ec(kp) => kp.sign(&rng, input).unwrap().as_ref().to_vec(),
        }
    }
}

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A compact JWS with the given header fields and claims.
pub fn mint_with_header(header: Value, claims: &Value, signer: &Signer) -> String {
    let alg = header["alg"].as_str().unwrap_or("").to_string();
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = signer.sign(&alg, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

pub fn mint(alg: &str, claims: &Value, signer: &Signer) -> String {
    mint_with_header(json!({"alg": alg, "typ": "JWT"}), claims, signer)
}

/// Claims for member 42 valid for an hour.
pub fn claims() -> Value {
    json!({"sub": "42", "exp": now() + 3600})
}

pub fn connect_req(body: &Value) -> ConnectReq {
    connect_raw(body.to_string().into_bytes())
}

pub fn connect_raw(body: Vec<u8>) -> ConnectReq {
    ConnectReq {
        server: "comet-1".into(),
        cookie: String::new(),
        token: Bytes::from(body),
        client_addr: "203.0.113.9:40000".into(),
        headers: HashMap::new(),
    }
}

/// A WebSocket connect whose request target is `path`.
pub fn ws_connect(body: &Value, path: &str) -> ConnectReq {
    let mut req = connect_req(body);
    req.headers.insert(":path".into(), path.into());
    req.headers.insert("host".into(), "example.test".into());
    req
}

/// A started authenticator and what owns its tasks.
pub struct Started {
    pub auth: Arc<dyn Authenticator>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
}

impl Started {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("authenticator tasks stop");
    }
}

pub async fn start(cfg: AuthConfig) -> Started {
    try_start(cfg).await.expect("authenticator starts")
}

pub async fn try_start(cfg: AuthConfig) -> Result<Started, auth::AuthSetupError> {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let auth = auth::build(&cfg, stop.clone(), &tracker).await?;
    Ok(Started {
        auth,
        stop,
        tracker,
    })
}

/// Asserts a refusal of `kind` whose message contains `part`, and that the
/// message never quotes `token`.
#[track_caller]
pub fn assert_refused(r: Result<herald_logic::Identity, RpcError>, kind: ErrorKind, part: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.kind, kind, "{e}");
    assert!(
        e.message.contains(part),
        "{:?} does not contain {part:?}",
        e.message
    );
}

/// A JWKS endpoint on loopback whose document and status the test changes, and
/// which counts the fetches it served.
pub struct KeyServer {
    pub url: String,
    state: Arc<KeyServerState>,
    stop: CancellationToken,
}

struct KeyServerState {
    doc: std::sync::Mutex<(u16, String)>,
    fetches: std::sync::atomic::AtomicUsize,
}

impl KeyServer {
    pub async fn start(keys: Vec<Value>) -> KeyServer {
        let state = Arc::new(KeyServerState {
            doc: std::sync::Mutex::new((200, json!({"keys": keys}).to_string())),
            fetches: Default::default(),
        });
        let app = axum::Router::new()
            .route(
                "/keys",
                axum::routing::get(
                    |axum::extract::State(s): axum::extract::State<Arc<KeyServerState>>| async move {
                        s.fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let (status, body) = s.doc.lock().unwrap().clone();
                        (axum::http::StatusCode::from_u16(status).unwrap(), body)
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keys", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
                .unwrap();
        });
        KeyServer { url, state, stop }
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.doc.lock().unwrap() = (200, json!({"keys": keys}).to_string());
    }

    pub fn set_answer(&self, status: u16, body: &str) {
        *self.state.doc.lock().unwrap() = (status, body.to_string());
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `f` every 20 ms until it is true; fails after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
