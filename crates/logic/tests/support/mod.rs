//! Test support for the authenticators (token minting with the fixture keys, connect
//! requests, and starting an authenticator from a configuration) and for the push
//! tests (reading back what logic queued).

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

/// An auth webhook backend on loopback: answers what the test sets, records the
/// last call, counts calls in flight, and can hold calls until the test opens its
/// gate.
pub struct Backend {
    pub url: String,
    pub state: Arc<BackendState>,
    stop: CancellationToken,
}

pub struct BackendState {
    answer: std::sync::Mutex<(u16, String)>,
    gate: tokio::sync::watch::Sender<bool>,
    pub calls: std::sync::atomic::AtomicUsize,
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub max_in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<Option<(axum::http::HeaderMap, Value)>>,
}

impl Backend {
    pub async fn start() -> Backend {
        use std::sync::atomic::Ordering::SeqCst;
        let state = Arc::new(BackendState {
            answer: std::sync::Mutex::new((200, r#"{"allow":false}"#.into())),
            gate: tokio::sync::watch::channel(true).0,
            calls: Default::default(),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            last: Default::default(),
        });
        let handler = |axum::extract::State(s): axum::extract::State<Arc<BackendState>>,
                       headers: axum::http::HeaderMap,
                       body: bytes::Bytes| async move {
            s.calls.fetch_add(1, SeqCst);
            let n = s.in_flight.fetch_add(1, SeqCst) + 1;
            s.max_in_flight.fetch_max(n, SeqCst);
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            *s.last.lock().unwrap() = Some((headers, json));
            let mut open = s.gate.subscribe();
            let _ = open.wait_for(|o| *o).await;
            s.in_flight.fetch_sub(1, SeqCst);
            let (status, body) = s.answer.lock().unwrap().clone();
            (axum::http::StatusCode::from_u16(status).unwrap(), body)
        };
        let app = axum::Router::new()
            .route("/auth", axum::routing::post(handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/auth", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
                .unwrap();
        });
        Backend { url, state, stop }
    }

    pub fn answer(&self, status: u16, body: &str) {
        *self.state.answer.lock().unwrap() = (status, body.to_string());
    }

    /// Calls wait until the gate is opened again.
    pub fn hold(&self) {
        self.state.gate.send_replace(false);
    }

    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }

    /// The headers and JSON body of the last call.
    pub fn last(&self) -> (axum::http::HeaderMap, Value) {
        self.state.last.lock().unwrap().clone().expect("a call")
    }

    pub fn in_flight(&self) -> usize {
        self.state
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.release();
        self.stop.cancel();
    }
}

pub fn hook_config(url: &str) -> AuthConfig {
    let mut cfg = AuthConfig {
        mode: herald_logic::auth::AuthMode::Webhook,
        ..Default::default()
    };
    cfg.webhook.url = url.into();
    cfg.webhook
        .headers
        .insert("x-herald-secret".into(), "s3cret".into());
    cfg
}

/// A private CA and an HTTPS backend for 127.0.0.1 that it signed, answering every
/// request with `answer` (raw HTTP/1.1, one request per connection).
pub struct TlsBackend {
    pub url: String,
    pub ca_file: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca_file: PathBuf,
    stop: CancellationToken,
}

impl TlsBackend {
    pub async fn start(answer: &'static str) -> TlsBackend {
        use herald_tls::rustls;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!(
            "herald-auth-tls-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap()
        };
        let issuer = ca("test CA");
        let other = ca("other CA");
        let ca_file = dir.join("ca.pem");
        let other_ca_file = dir.join("other-ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        std::fs::write(&other_ca_file, other.pem()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(herald_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/auth", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => r.unwrap().0,
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that distrusts the certificate fails the handshake.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsBackend {
            url,
            ca_file,
            other_ca_file,
            stop,
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Takes every queued message (the queue holds `depth` of them), acknowledged.
pub async fn drain(queue: &herald_queue::MemoryQueue) -> Vec<herald_rpc::PushMsg> {
    use herald_queue::Queue;
    use prost::Message;
    let mut consumer = queue.consumer().await.unwrap();
    let mut out = Vec::new();
    while queue.depth() != Some(0) {
        let d = consumer.next().await.unwrap();
        out.push(herald_rpc::PushMsg::decode(d.payload.clone()).unwrap());
        d.ack().await.unwrap();
    }
    out
}
