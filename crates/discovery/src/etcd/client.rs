//! A small etcd v3 client over gRPC: the KV calls (range, put, delete), leases
//! (grant, revoke, keep-alive stream) and watches the registry needs.
//!
//! The client keeps one HTTP/2 connection to one endpoint at a time. When a call
//! fails because that endpoint is unreachable (or does not answer within the call
//! timeout), the next call connects to the next endpoint of the list, in order,
//! wrapping around.
//!
//! Endpoints may be `https://` (TLS through herald-tls, see [`Security`]), and
//! with etcd's authentication on the client authenticates as a user and sends
//! the token on every call, authenticating again when etcd refuses it
//! ([`super::auth`]).

use std::sync::Mutex;
use std::time::Duration;

use futures_util::stream;
use tokio::sync::mpsc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;
use tracing::{debug, warn};

use super::auth::{is_token_error, Security, Token};
use super::wire::*;

const RANGE: &str = "/etcdserverpb.KV/Range";
const PUT: &str = "/etcdserverpb.KV/Put";
const DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
const TXN: &str = "/etcdserverpb.KV/Txn";
const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const WATCH: &str = "/etcdserverpb.Watch/Watch";
const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";

/// HTTP/2 pings while a stream is open, so that a silently dead connection (no
/// reset, e.g. a network partition) breaks the keep-alive and watch streams.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);

/// Why an etcd call failed: the gRPC status, and the endpoint it was sent to.
#[derive(Debug, Clone)]
pub struct EtcdError {
    /// The endpoint called (empty when none could be reached).
    pub endpoint: String,
    /// gRPC status (`Unavailable` for connection failures, `DeadlineExceeded` for
    /// the call timeout).
    pub status: Status,
}

impl EtcdError {
    /// The gRPC status code.
    pub fn code(&self) -> Code {
        self.status.code()
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd at {}: {} ({:?})",
            self.endpoint,
            self.status.message(),
            self.status.code()
        )
    }
}

impl std::error::Error for EtcdError {}

/// The sending half of a bidirectional stream (keep-alive or watch). Dropping it
/// ends the request stream, which makes etcd close the call.
pub type StreamSender<T> = mpsc::Sender<T>;

/// A connection to an etcd cluster (one endpoint at a time). Cheap to share
/// behind an `Arc`; every call may run concurrently.
pub struct EtcdClient {
    endpoints: Vec<String>,
    dial_timeout: Duration,
    call_timeout: Duration,
    /// The connected endpoint's index and channel; `None` after a failure, so the
    /// next call connects afresh starting at `next`.
    current: Mutex<Current>,
    /// TLS and the user to authenticate as.
    security: Security,
    /// The token of the last authentication.
    token: Token,
}

struct Current {
    live: Option<(usize, Channel)>,
    next: usize,
}

/// Normalizes an endpoint to an `http://host:port` URI, or `https://` with TLS.
/// The scheme must agree with whether TLS is configured, so a typo never sends
/// credentials in the clear.
fn endpoint_uri(endpoint: &str, tls: bool) -> Result<String, String> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err("empty etcd endpoint".into());
    }
    match (e.strip_prefix("https://"), e.strip_prefix("http://"), tls) {
        (Some(_), _, true) | (_, Some(_), false) => Ok(e.to_string()),
        (Some(_), _, false) => Err(format!(
            "{endpoint}: an https endpoint needs TLS settings (the CA of etcd's certificate)"
        )),
        (_, Some(_), true) => Err(format!(
            "{endpoint}: TLS is configured but the endpoint is http://"
        )),
        (None, None, true) => Ok(format!("https://{e}")),
        (None, None, false) => Ok(format!("http://{e}")),
    }
}

fn is_connection_error(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
}

impl EtcdClient {
    /// Connects to the first reachable endpoint of `endpoints` (`http://host:port`
    /// or `host:port`), trying them in order. The error names every endpoint tried
    /// and why it failed.
    pub async fn connect(
        endpoints: &[String],
        dial_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<EtcdClient, EtcdError> {
        Self::connect_secured(endpoints, dial_timeout, call_timeout, Security::default()).await
    }

    /// [`connect`](EtcdClient::connect) with TLS (`https://` endpoints; a bare
    /// `host:port` then means https) and a user to authenticate as. A refused
    /// password or certificate fails here.
    pub async fn connect_secured(
        endpoints: &[String],
        dial_timeout: Duration,
        call_timeout: Duration,
        security: Security,
    ) -> Result<EtcdClient, EtcdError> {
        let endpoints = endpoints
            .iter()
            .map(|e| endpoint_uri(e, security.tls.is_some()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EtcdError {
                endpoint: String::new(),
                status: Status::invalid_argument(e),
            })?;
        if endpoints.is_empty() {
            return Err(EtcdError {
                endpoint: String::new(),
                status: Status::invalid_argument("no etcd endpoint configured"),
            });
        }
        let client = EtcdClient {
            endpoints,
            dial_timeout,
            call_timeout,
            current: Mutex::new(Current {
                live: None,
                next: 0,
            }),
            security,
            token: Token::default(),
        };
        let (idx, ch) = client.channel().await?;
        client.authenticate(idx, ch).await?;
        Ok(client)
    }

    /// Trades the user's password for a fresh token (nothing to do without a
    /// user).
    async fn authenticate(&self, idx: usize, ch: Channel) -> Result<(), EtcdError> {
        let Some(user) = &self.security.user else {
            return Ok(());
        };
        let req = AuthenticateRequest {
            name: user.name.clone(),
            password: user.password.clone(),
        };
        let resp: AuthenticateResponse = self
            .call_once(ch, AUTHENTICATE, req, false)
            .await
            .map_err(|status| EtcdError {
                endpoint: self.endpoints[idx].clone(),
                status,
            })?;
        self.token.set(&resp.token).map_err(|status| EtcdError {
            endpoint: self.endpoints[idx].clone(),
            status,
        })?;
        debug!(user = %user.name, "authenticated to etcd");
        Ok(())
    }

    /// One unary call on `ch` (with the token unless `anonymous`), bounded by the
    /// call timeout.
    async fn call_once<Req, Resp>(
        &self,
        ch: Channel,
        path: &'static str,
        req: Req,
        with_token: bool,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut request = tonic::Request::new(req);
        if with_token {
            self.token.attach(request.metadata_mut());
        }
        let mut grpc = tonic::client::Grpc::new(ch);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(error_chain(&e)))?;
            grpc.unary(
                request,
                PathAndQuery::from_static(path),
                ProstCodec::<Req, Resp>::default(),
            )
            .await
        };
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(r) => r.map(|resp| resp.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {:?}",
                self.call_timeout
            ))),
        }
    }

    /// The endpoints, as normalized URIs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The current channel, connecting (endpoints in order from the one after the
    /// last failure) if there is none.
    async fn channel(&self) -> Result<(usize, Channel), EtcdError> {
        let start = {
            let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(live) = &cur.live {
                return Ok(live.clone());
            }
            cur.next
        };
        let mut failures = Vec::new();
        for i in 0..self.endpoints.len() {
            let idx = (start + i) % self.endpoints.len();
            let uri = &self.endpoints[idx];
            match self.dial(uri).await {
                Ok(ch) => {
                    debug!(endpoint = %uri, "connected to etcd");
                    let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
                    // A concurrent caller may have connected meanwhile: keep one.
                    let live = cur.live.get_or_insert((idx, ch)).clone();
                    return Ok(live);
                }
                Err(e) => {
                    warn!(endpoint = %uri, error = %e, "cannot connect to etcd");
                    failures.push((uri.as_str(), e));
                }
            }
        }
        let (endpoint, msg) = if self.endpoints.len() == 1 {
            (
                self.endpoints[0].clone(),
                format!("cannot connect: {}", failures[0].1),
            )
        } else {
            (
                self.endpoints.join(","),
                format!(
                    "cannot connect to any endpoint: {}",
                    failures
                        .iter()
                        .map(|(uri, e)| format!("{uri}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
        };
        Err(EtcdError {
            endpoint,
            status: Status::unavailable(msg),
        })
    }

    async fn dial(&self, uri: &str) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| format!("invalid endpoint: {e}"))?
            .connect_timeout(self.dial_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(self.call_timeout);
        let connect = async {
            match &self.security.tls {
                Some(tls) => endpoint.connect_with_connector(tls.clone()).await,
                None => endpoint.connect().await,
            }
        };
        match tokio::time::timeout(self.dial_timeout, connect).await {
            Ok(Ok(ch)) => Ok(ch),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("no connection within {:?}", self.dial_timeout)),
        }
    }

    /// Forgets the channel to endpoint `idx` after a connection failure, so the
    /// next call connects to the following endpoint.
    fn failed(&self, idx: usize) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.live.as_ref().is_some_and(|(i, _)| *i == idx) {
            cur.live = None;
            cur.next = (idx + 1) % self.endpoints.len();
        }
    }

    /// One unary call; on a connection failure it is tried once on each other
    /// endpoint, and when etcd refuses the token it authenticates again and tries
    /// once more.
    async fn unary<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, EtcdError>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut attempt = 0;
        let mut authenticated_again = false;
        loop {
            let (idx, ch) = self.channel().await?;
            let status = match self.call_once(ch.clone(), path, req.clone(), true).await {
                Ok(resp) => return Ok(resp),
                Err(status) => status,
            };
            if self.security.user.is_some() && !authenticated_again && is_token_error(&status) {
                debug!(reason = %status.message(), "etcd refused the token; authenticating again");
                authenticated_again = true;
                self.authenticate(idx, ch).await?;
                continue;
            }
            attempt += 1;
            let err = EtcdError {
                endpoint: self.endpoints[idx].clone(),
                status,
            };
            if !is_connection_error(&err.status) {
                return Err(err);
            }
            self.failed(idx);
            if attempt >= self.endpoints.len() {
                return Err(err);
            }
            warn!(error = %err, "etcd call failed; trying the next endpoint");
        }
    }

    /// Opens a bidirectional stream and sends `first` on it. Answers with the
    /// sender for further requests and the response stream. A stream that breaks
    /// marks its endpoint failed when the caller reports it with
    /// [`EtcdClient::stream_failed`].
    async fn bidi<Req, Resp>(
        &self,
        path: &'static str,
        first: Req,
    ) -> Result<(StreamSender<Req>, Streaming<Resp>, usize), EtcdError>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let (idx, ch) = self.channel().await?;
        match self.open_stream(idx, ch.clone(), path, first.clone()).await {
            Err(e) if self.security.user.is_some() && is_token_error(&e.status) => {
                self.authenticate(idx, ch.clone()).await?;
                self.open_stream(idx, ch, path, first).await
            }
            other => other,
        }
    }

    async fn open_stream<Req, Resp>(
        &self,
        idx: usize,
        ch: Channel,
        path: &'static str,
        first: Req,
    ) -> Result<(StreamSender<Req>, Streaming<Resp>, usize), EtcdError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel::<Req>(16);
        // Cannot fail: the receiver is alive and the buffer empty.
        let _ = tx.try_send(first);
        let requests = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut request = tonic::Request::new(requests);
        // Have etcd end the stream when its member loses the raft leader (as
        // etcd's own client does), instead of leaving it silently stale.
        request
            .metadata_mut()
            .insert("hasleader", MetadataValue::from_static("true"));
        self.token.attach(request.metadata_mut());
        let mut grpc = tonic::client::Grpc::new(ch);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(error_chain(&e)))?;
            grpc.streaming(
                request,
                PathAndQuery::from_static(path),
                ProstCodec::<Req, Resp>::default(),
            )
            .await
        };
        let status = match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(resp)) => return Ok((tx, resp.into_inner(), idx)),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!(
                "stream not opened within {:?}",
                self.call_timeout
            )),
        };
        if is_connection_error(&status) {
            self.failed(idx);
        }
        Err(EtcdError {
            endpoint: self.endpoints[idx].clone(),
            status,
        })
    }

    /// Reports that a stream opened on endpoint `idx` broke with `status`: after a
    /// connection failure the next call goes to the next endpoint.
    pub fn stream_failed(&self, idx: usize, status: &Status) {
        if is_connection_error(status) || status.code() == Code::Unknown {
            self.failed(idx);
        }
    }

    /// The endpoint URI at `idx`.
    pub fn endpoint(&self, idx: usize) -> &str {
        &self.endpoints[idx % self.endpoints.len()]
    }

    /// Every key starting with `prefix` (in key order), and the revision read at.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<RangeResponse, EtcdError> {
        self.unary(
            RANGE,
            RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                ..Default::default()
            },
        )
        .await
    }

    /// The number of keys starting with `prefix` (a cheap liveness check).
    pub async fn count_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let resp: RangeResponse = self
            .unary(
                RANGE,
                RangeRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    count_only: true,
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp.count)
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let resp: RangeResponse = self
            .unary(
                RANGE,
                RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Writes `key` = `value`, attached to `lease` (0 = no lease).
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let _: PutResponse = self
            .unary(
                PUT,
                PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Deletes `key`; answers whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, EtcdError> {
        let resp: DeleteRangeResponse = self
            .unary(
                DELETE_RANGE,
                DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp.deleted > 0)
    }

    /// Writes `key` = `value` on `lease` only if `key` does not exist, atomically.
    /// Answers `None` when it was written, or the key as it already was.
    pub async fn create_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Option<KeyValue>, EtcdError> {
        let resp: TxnResponse = self
            .unary(
                TXN,
                TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Create as i32,
                        key: key.to_vec(),
                        target_union: Some(compare::TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.to_vec(),
                            value: value.to_vec(),
                            lease,
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: key.to_vec(),
                            ..Default::default()
                        })),
                    }],
                },
            )
            .await?;
        if resp.succeeded {
            return Ok(None);
        }
        let existing = resp.responses.into_iter().find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        });
        // Deleted between the compare and the read cannot happen inside one
        // transaction; an empty answer still means "not written".
        Ok(Some(existing.unwrap_or_default()))
    }

    /// Deletes `key` only if it is attached to `lease`, atomically; answers whether
    /// it was deleted.
    pub async fn delete_if_lease(&self, key: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let resp: TxnResponse = self
            .unary(
                TXN,
                TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Lease as i32,
                        key: key.to_vec(),
                        target_union: Some(compare::TargetUnion::Lease(lease)),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: key.to_vec(),
                                ..Default::default()
                            },
                        )),
                    }],
                    failure: Vec::new(),
                },
            )
            .await?;
        Ok(resp.succeeded)
    }

    /// Grants a lease of `ttl` seconds; answers its ID and the TTL etcd chose.
    pub async fn lease_grant(&self, ttl: i64) -> Result<(i64, i64), EtcdError> {
        let resp: LeaseGrantResponse = self
            .unary(LEASE_GRANT, LeaseGrantRequest { ttl, id: 0 })
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError {
                endpoint: self.endpoints.join(","),
                status: Status::unavailable(format!("lease grant refused: {}", resp.error)),
            });
        }
        Ok((resp.id, resp.ttl))
    }

    /// Revokes lease `id`, deleting its keys at once.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let _: LeaseRevokeResponse = self.unary(LEASE_REVOKE, LeaseRevokeRequest { id }).await?;
        Ok(())
    }

    /// Opens a keep-alive stream for lease `id` and sends the first refresh.
    /// Send [`LeaseKeepAliveRequest`]s on the sender; every one is answered on the
    /// stream with the lease's new TTL (0 or less once it no longer exists). Also
    /// answers the index of the endpoint the stream runs on.
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<
        (
            StreamSender<LeaseKeepAliveRequest>,
            Streaming<LeaseKeepAliveResponse>,
            usize,
        ),
        EtcdError,
    > {
        self.bidi(LEASE_KEEP_ALIVE, LeaseKeepAliveRequest { id })
            .await
    }

    /// Opens a watch stream with one watcher created by `create`. The first
    /// response answers the creation (`created`, or `canceled` with a reason).
    /// Also answers the index of the endpoint the stream runs on.
    pub async fn watch(
        &self,
        create: WatchCreateRequest,
    ) -> Result<(StreamSender<WatchRequest>, Streaming<WatchResponse>, usize), EtcdError> {
        self.bidi(
            WATCH,
            WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            },
        )
        .await
    }
}

/// An error and its causes, joined (transport errors hide the useful part, e.g.
/// "Connection refused", in their sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
