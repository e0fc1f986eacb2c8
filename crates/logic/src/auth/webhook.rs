//! `webhook` mode: a backend decides every connect.
//!
//! logic POSTs JSON `{"server", "client_addr", "headers", "cookie", "body"}` to
//! `auth.webhook.url` (the auth body as JSON when it parses, else as a string) and
//! expects `200` with `{"allow": true, "mid": …, "key"?, "room_id"?, "rooms"?,
//! "accepts"?, "expires_at"?}` or `{"allow": false, "reason"?}`. Anything else (a
//! non-200 status, a timeout, no connection, a body that is not such an answer) is
//! a failure: the client is refused, never let in, and the failure is counted in
//! `herald_auth_webhook_failures_total{reason}`. The backend's answer is trusted;
//! the client's auth body is held to the rules of [`super::claims`].
//!
//! At most `concurrency` calls are in flight; a connect beyond them waits for a
//! slot, and the whole wait (slot and call) is bounded by `timeout`, so a slow
//! backend costs connects a refusal, not a pile-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use herald_rpc::{ConnectReq, RpcError, RpcResult};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use metrics::{counter, Counter};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::claims::{self, granted_ints, opt_int, opt_string, AuthBody, Granted};
use super::client::{CallError, HttpClient};
use super::{refused, AuthSetupError, WebhookConfig};
use crate::{Authenticator, Identity};

/// Largest answer accepted from the backend.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// Longest refusal reason passed on (to logs) from the backend.
const MAX_REASON_CHARS: usize = 200;
/// Least time between two warnings about failing calls.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counters of failed calls, one per reason (made once, not per call).
struct Failures {
    overloaded: Counter,
    timeout: Counter,
    connect: Counter,
    request: Counter,
    status: Counter,
    garbage: Counter,
}

impl Failures {
    fn new() -> Failures {
        let c = |reason: &'static str| counter!("herald_auth_webhook_failures_total", "reason" => reason);
        Failures {
            overloaded: c("overloaded"),
            timeout: c("timeout"),
            connect: c("connect"),
            request: c("request"),
            status: c("status"),
            garbage: c("garbage"),
        }
    }
}

/// A call the connect gave up on (after `timeout`) keeps its slot for at most this
/// many more timeouts, then is dropped (its connection closed).
const GIVE_UP_AFTER: u32 = 3;

/// Asks a backend about each connect.
pub struct WebhookAuthenticator {
    url: Uri,
    client: HttpClient,
    /// The configured extra headers, parsed once.
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    concurrency: usize,
    /// One per call the backend is working on: a slot is held until the backend
    /// answers (or the call is given up for good), not just until the connect
    /// stops waiting, so the backend never has more than `concurrency` calls.
    slots: Arc<Semaphore>,
    /// Runs each call, so a call outlives the connect that gave up on it.
    tracker: TaskTracker,
    stop: CancellationToken,
    failures: Failures,
    /// Unix milliseconds of the last failure warning (failures during an outage
    /// are many; one line per [`WARN_EVERY`] says enough).
    last_warning: AtomicU64,
}

/// The auth body as sent: JSON when it is, else a string.
#[derive(Serialize)]
#[serde(untagged)]
enum BodyOut<'a> {
    Json(&'a RawValue),
    Text(std::borrow::Cow<'a, str>),
}

#[derive(Serialize)]
struct Call<'a> {
    server: &'a str,
    client_addr: &'a str,
    headers: &'a HashMap<String, String>,
    cookie: &'a str,
    body: BodyOut<'a>,
}

#[derive(Deserialize)]
struct Decision {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, deserialize_with = "opt_int")]
    mid: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    key: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    room_id: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "granted_ints")]
    accepts: Option<Vec<i32>>,
    #[serde(default)]
    expires_at: Option<i64>,
}

fn config_err(m: impl Into<String>) -> AuthSetupError {
    AuthSetupError::Config(m.into())
}

impl WebhookAuthenticator {
    /// Validates `cfg` and prepares the client; its connections run on `tracker`
    /// until `stop`.
    pub fn new(
        cfg: &WebhookConfig,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<WebhookAuthenticator, AuthSetupError> {
        if cfg.url.is_empty() {
            return Err(config_err("auth.mode = webhook needs auth.webhook.url"));
        }
        let url: Uri = cfg
            .url
            .parse()
            .map_err(|e| config_err(format!("auth.webhook.url is not a URL: {e}")))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(config_err(
                "auth.webhook.url must be an http:// or https:// URL",
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(config_err("auth.webhook.timeout must be positive"));
        }
        if cfg.concurrency == 0 || cfg.concurrency > Semaphore::MAX_PERMITS {
            return Err(config_err("auth.webhook.concurrency must be at least 1"));
        }
        let mut headers = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                config_err(format!(
                    "auth.webhook.headers: {name:?} is not a header name"
                ))
            })?;
            let mut v = HeaderValue::from_str(value).map_err(|_| {
                config_err(format!(
                    "auth.webhook.headers: the value of {name:?} is not a valid header value"
                ))
            })?;
            v.set_sensitive(true);
            headers.push((n, v));
        }
        let client = HttpClient::new(
            &url,
            &cfg.tls,
            "auth.webhook.tls",
            cfg.concurrency,
            stop.clone(),
            tracker,
        )?;
        info!(mode = "webhook", url = %super::url_for_logs(&url), timeout = ?cfg.timeout,
            concurrency = cfg.concurrency, "connect authentication: a backend decides");
        Ok(WebhookAuthenticator {
            url,
            client,
            headers,
            timeout: cfg.timeout,
            concurrency: cfg.concurrency,
            slots: Arc::new(Semaphore::new(cfg.concurrency)),
            tracker: tracker.clone(),
            stop,
            failures: Failures::new(),
            last_warning: AtomicU64::new(0),
        })
    }

    /// Counts a failed call, logs it (sparingly) and returns the refusal.
    fn failure(&self, counter: &Counter, what: String) -> RpcError {
        counter.increment(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(url = %super::url_for_logs(&self.url), error = %what,
                "auth webhook failed; connects are refused while it fails");
        } else {
            debug!(error = %what, "auth webhook failed");
        }
        RpcError::unavailable(format!("auth webhook: {what}"))
    }

    fn request(&self, req: &ConnectReq) -> RpcResult<Request<Full<Bytes>>> {
        let body = match serde_json::from_slice::<&RawValue>(&req.token) {
            Ok(raw) => BodyOut::Json(raw),
            Err(_) => BodyOut::Text(String::from_utf8_lossy(&req.token)),
        };
        let call = Call {
            server: &req.server,
            client_addr: &req.client_addr,
            headers: &req.headers,
            cookie: &req.cookie,
            body,
        };
        let payload = serde_json::to_vec(&call)
            .map_err(|e| RpcError::internal(format!("auth webhook request: {e}")))?;
        let mut builder = Request::post(self.url.clone()).header(CONTENT_TYPE, "application/json");
        for (n, v) in &self.headers {
            builder = builder.header(n, v);
        }
        builder
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| RpcError::internal(format!("auth webhook request: {e}")))
    }

    async fn ask(&self, req: &ConnectReq) -> RpcResult<Decision> {
        let deadline = Instant::now() + self.timeout;
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(RpcError::unavailable("auth webhook is shut down")),
            Err(_) => {
                return Err(self.failure(
                    &self.failures.overloaded,
                    format!(
                        "{} calls in flight; no slot within {:?}",
                        self.concurrency, self.timeout
                    ),
                ))
            }
        };
        let http_req = self.request(req)?;
        // The call runs on its own task holding the slot: if this connect stops
        // waiting at `deadline`, the backend is still busy with it, and the slot
        // stays taken until it answers or GIVE_UP_AFTER timeouts have passed.
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let client = self.client.clone();
        let stop = self.stop.clone();
        let give_up = deadline + self.timeout * GIVE_UP_AFTER;
        self.tracker.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tokio::time::timeout_at(give_up, client.send(http_req, MAX_ANSWER_BYTES)) => {
                    if let Ok(r) = r {
                        let _ = answer_tx.send(r);
                    }
                }
            }
        });
        let answer = match tokio::time::timeout_at(deadline, answer_rx).await {
            Err(_) | Ok(Err(_)) => {
                return Err(self.failure(
                    &self.failures.timeout,
                    format!("no answer within {:?}", self.timeout),
                ))
            }
            Ok(Ok(r)) => match r {
                Err(e @ CallError::Connect(_)) => {
                    return Err(self.failure(&self.failures.connect, e.to_string()))
                }
                Err(e @ CallError::Request(_)) => {
                    return Err(self.failure(&self.failures.request, e.to_string()))
                }
                Err(e @ CallError::TooLarge(_)) => {
                    return Err(self.failure(&self.failures.garbage, e.to_string()))
                }
                Ok(a) => a,
            },
        };
        if answer.status != StatusCode::OK {
            return Err(self.failure(&self.failures.status, format!("answered {}", answer.status)));
        }
        serde_json::from_slice::<Decision>(&answer.body).map_err(|e| {
            self.failure(
                &self.failures.garbage,
                format!("answer is not {{\"allow\": …}} JSON: {e}"),
            )
        })
    }
}

#[async_trait]
impl Authenticator for WebhookAuthenticator {
    async fn authenticate(&self, req: &ConnectReq) -> RpcResult<Identity> {
        let decision = self.ask(req).await?;
        if !decision.allow {
            let reason: String = decision
                .reason
                .unwrap_or_default()
                .chars()
                .take(MAX_REASON_CHARS)
                .collect();
            return Err(refused(if reason.is_empty() {
                "refused by the auth webhook".to_string()
            } else {
                format!("refused by the auth webhook: {reason}")
            }));
        }
        let Some(mid) = decision.mid else {
            return Err(self.failure(&self.failures.garbage, "answer allows without a mid".into()));
        };
        // The backend saw the body and decided; a body in another shape than
        // goim's states nothing for the rules to check.
        let body = AuthBody::parse(&req.token).unwrap_or_default();
        claims::resolve(
            body,
            Granted {
                mid,
                key: decision.key,
                room: decision.room_id,
                rooms: decision.rooms,
                ops: decision.accepts,
                expires_at: decision.expires_at.unwrap_or(0),
            },
        )
    }

    fn mode(&self) -> &'static str {
        "webhook"
    }
}
