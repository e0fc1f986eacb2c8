//! The tiers over gRPC (tonic): servers that expose a [`CometService`] or
//! [`LogicService`] as goim's `goim.comet.Comet` and `goim.logic.Logic`, and
//! clients that implement the same traits by calling a remote process.
//!
//! Method paths, packages and field numbers are goim's (see `proto/goim/`), so a
//! herald job can push to a goim comet and a goim comet can authenticate through a
//! herald logic. Servers accept gzip requests (goim's comet compresses
//! `RenewOnline`).
//!
//! Every client call has a deadline (sent as `grpc-timeout` and enforced locally).
//! Clients never retry on their own: [`LogicPool`] retries the idempotent calls
//! (`Disconnect`, `Heartbeat`, `RenewOnline`, `Nodes`, `Refresh`) on another logic when one is
//! unreachable; `Connect` and `Receive` are tried once, and job's comet calls are
//! tried once (a failure is counted and logged by job). A logic whose shared
//! engine failed (the store) says so in the `herald-engine` trailer
//! ([`RpcError::engine`]): the call is not tried on another logic, which shares
//! that engine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::comet::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, CometService, PushMsgReply,
    PushMsgReq, RoomsReply, RoomsReq,
};
use crate::logic::{
    ConnectReply, ConnectReq, DisconnectReply, DisconnectReq, HeartbeatReply, HeartbeatReq,
    HistoryReply, HistoryReq, LogicService, NodesReply, NodesReq, OnlineReply, OnlineReq,
    ReceiveReply, ReceiveReq,
};
use crate::transport::Dialer;
use crate::{ErrorKind, RpcError, RpcResult};

use crate::goim::comet::comet_client::CometClient;
use crate::goim::comet::comet_server::{Comet, CometServer};
use crate::goim::logic::logic_client::LogicClient;
use crate::goim::logic::logic_server::{Logic, LogicServer};

/// Largest message accepted or sent (goim uses 16 MiB windows and limits).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Status metadata naming the shared engine a failure is in ([`RpcError::engine`]);
/// clients that do not know it (goim's) see a plain status.
const ENGINE_KEY: &str = "herald-engine";

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Status {
        let code = match e.kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        };
        let mut status = Status::new(code, e.message);
        let engine = e.engine.as_deref().map(MetadataValue::try_from);
        if let Some(Ok(engine)) = engine {
            status.metadata_mut().insert(ENGINE_KEY, engine);
        }
        status
    }
}

impl From<Status> for RpcError {
    fn from(s: Status) -> RpcError {
        let kind = match s.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                ErrorKind::InvalidArgument
            }
            Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthenticated,
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
                ErrorKind::Unavailable
            }
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            // A broken connection (the peer went away mid-call) carries the
            // transport error as its source: the peer is unavailable.
            Code::Unknown if std::error::Error::source(&s).is_some() => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        let engine = s.metadata().get(ENGINE_KEY).and_then(|v| v.to_str().ok());
        RpcError {
            engine: engine.map(str::to_string),
            ..RpcError::new(kind, s.message().to_string())
        }
    }
}

/// Deadlines of a client.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// Establishing the HTTP/2 connection.
    pub connect: Duration,
    /// A whole call.
    pub call: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(1),
            call: Duration::from_secs(3),
        }
    }
}

/// `grpc://host:port` (goim's registry form), `http://host:port` or `host:port` →
/// a lazily connected plain channel (the first call connects; a broken connection
/// is re-established by the next call). [`Dialer::channel`] also dials TLS.
pub fn channel(addr: &str, timeouts: ClientTimeouts) -> RpcResult<Channel> {
    Dialer::new(timeouts).channel(addr)
}

fn status_error(addr: &str, s: Status) -> RpcError {
    // A transport failure says only "transport error"; the reason (refused
    // connection, TLS alert) is in its sources.
    let mut detail = String::new();
    let mut source = std::error::Error::source(&s);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) && !s.message().contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    let mut e = RpcError::from(s);
    e.message = format!("{addr}: {}{detail}", e.message);
    e
}

// ---------------------------------------------------------------------------
// comet

/// Serves a [`CometService`] as `goim.comet.Comet`.
pub struct CometGrpc(pub Arc<dyn CometService>);

#[async_trait]
impl Comet for CometGrpc {
    async fn push_msg(&self, r: Request<PushMsgReq>) -> Result<Response<PushMsgReply>, Status> {
        let req = r.into_inner();
        if req.keys.is_empty() || req.proto.is_none() {
            return Err(Status::invalid_argument("PushMsg needs keys and a proto"));
        }
        self.0.push_msg(req).await?;
        Ok(Response::new(PushMsgReply {}))
    }

    async fn broadcast(
        &self,
        r: Request<BroadcastReq>,
    ) -> Result<Response<BroadcastReply>, Status> {
        let req = r.into_inner();
        if req.proto.is_none() {
            return Err(Status::invalid_argument("Broadcast needs a proto"));
        }
        self.0.broadcast(req).await?;
        Ok(Response::new(BroadcastReply {}))
    }

    async fn broadcast_room(
        &self,
        r: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        let req = r.into_inner();
        if req.proto.is_none() || req.room_id.is_empty() {
            return Err(Status::invalid_argument(
                "BroadcastRoom needs a room id and a proto",
            ));
        }
        self.0.broadcast_room(req).await?;
        Ok(Response::new(BroadcastRoomReply {}))
    }

    async fn rooms(&self, _: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        Ok(Response::new(self.0.rooms().await?))
    }
}

/// The tonic service for a comet, ready for `tonic::transport::Server::add_service`.
pub fn comet_server(service: Arc<dyn CometService>) -> CometServer<CometGrpc> {
    CometServer::new(CometGrpc(service))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A remote comet, called over gRPC.
#[derive(Clone)]
pub struct RemoteComet {
    addr: Arc<str>,
    client: CometClient<Channel>,
    dialer: Dialer,
}

impl RemoteComet {
    /// A plain client for the comet at `addr` (see [`channel`] for the accepted
    /// forms).
    pub fn new(addr: &str, timeouts: ClientTimeouts) -> RpcResult<RemoteComet> {
        RemoteComet::dial(addr, &Dialer::new(timeouts))
    }

    /// A client for the comet at `addr`, with `dialer`'s token and TLS.
    pub fn dial(addr: &str, dialer: &Dialer) -> RpcResult<RemoteComet> {
        let client = CometClient::new(dialer.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(RemoteComet {
            addr: addr.into(),
            client,
            dialer: dialer.clone(),
        })
    }
}

#[async_trait]
impl CometService for RemoteComet {
    async fn push_msg(&self, req: PushMsgReq) -> RpcResult<()> {
        let mut c = self.client.clone();
        c.push_msg(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(())
    }

    async fn broadcast(&self, req: BroadcastReq) -> RpcResult<()> {
        let mut c = self.client.clone();
        c.broadcast(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(())
    }

    async fn broadcast_room(&self, req: BroadcastRoomReq) -> RpcResult<()> {
        let mut c = self.client.clone();
        c.broadcast_room(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(())
    }

    async fn rooms(&self) -> RpcResult<RoomsReply> {
        let mut c = self.client.clone();
        let r = c
            .rooms(self.dialer.request(RoomsReq {}))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }
}

// ---------------------------------------------------------------------------
// logic

/// Serves a [`LogicService`] as `goim.logic.Logic`.
pub struct LogicGrpc(pub Arc<dyn LogicService>);

#[async_trait]
impl Logic for LogicGrpc {
    async fn connect(&self, r: Request<ConnectReq>) -> Result<Response<ConnectReply>, Status> {
        Ok(Response::new(self.0.connect(r.into_inner()).await?))
    }

    async fn disconnect(
        &self,
        r: Request<DisconnectReq>,
    ) -> Result<Response<DisconnectReply>, Status> {
        Ok(Response::new(self.0.disconnect(r.into_inner()).await?))
    }

    async fn heartbeat(
        &self,
        r: Request<HeartbeatReq>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        self.0.heartbeat(r.into_inner()).await?;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn renew_online(&self, r: Request<OnlineReq>) -> Result<Response<OnlineReply>, Status> {
        Ok(Response::new(self.0.renew_online(r.into_inner()).await?))
    }

    async fn receive(&self, r: Request<ReceiveReq>) -> Result<Response<ReceiveReply>, Status> {
        Ok(Response::new(self.0.receive(r.into_inner()).await?))
    }

    async fn nodes(&self, r: Request<NodesReq>) -> Result<Response<NodesReply>, Status> {
        Ok(Response::new(self.0.nodes(r.into_inner()).await?))
    }

    async fn refresh(&self, r: Request<ConnectReq>) -> Result<Response<ConnectReply>, Status> {
        Ok(Response::new(self.0.refresh(r.into_inner()).await?))
    }

    async fn history(&self, r: Request<HistoryReq>) -> Result<Response<HistoryReply>, Status> {
        Ok(Response::new(self.0.history(r.into_inner()).await?))
    }
}

/// The tonic service for logic, ready for `tonic::transport::Server::add_service`.
pub fn logic_server(service: Arc<dyn LogicService>) -> LogicServer<LogicGrpc> {
    LogicServer::new(LogicGrpc(service))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// One remote logic, called over gRPC.
#[derive(Clone)]
pub struct RemoteLogic {
    addr: Arc<str>,
    client: LogicClient<Channel>,
    dialer: Dialer,
}

impl RemoteLogic {
    /// A plain client for the logic at `addr` (see [`channel`] for the accepted
    /// forms).
    pub fn new(addr: &str, timeouts: ClientTimeouts) -> RpcResult<RemoteLogic> {
        RemoteLogic::dial(addr, &Dialer::new(timeouts))
    }

    /// A client for the logic at `addr`, with `dialer`'s token and TLS.
    pub fn dial(addr: &str, dialer: &Dialer) -> RpcResult<RemoteLogic> {
        let client = LogicClient::new(dialer.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(RemoteLogic {
            addr: addr.into(),
            client,
            dialer: dialer.clone(),
        })
    }

    /// The address this client calls.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

#[async_trait]
impl LogicService for RemoteLogic {
    async fn connect(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        let mut c = self.client.clone();
        let r = c
            .connect(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }

    async fn disconnect(&self, req: DisconnectReq) -> RpcResult<DisconnectReply> {
        let mut c = self.client.clone();
        let r = c
            .disconnect(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }

    async fn heartbeat(&self, req: HeartbeatReq) -> RpcResult<()> {
        let mut c = self.client.clone();
        c.heartbeat(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(())
    }

    async fn renew_online(&self, req: OnlineReq) -> RpcResult<OnlineReply> {
        let mut c = self.client.clone();
        let r = c
            .renew_online(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }

    async fn receive(&self, req: ReceiveReq) -> RpcResult<ReceiveReply> {
        let mut c = self.client.clone();
        let r = c
            .receive(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }

    async fn nodes(&self, req: NodesReq) -> RpcResult<NodesReply> {
        let mut c = self.client.clone();
        let r = c
            .nodes(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }

    async fn refresh(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        let mut c = self.client.clone();
        let r = c
            .refresh(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }

    async fn history(&self, req: HistoryReq) -> RpcResult<HistoryReply> {
        let mut c = self.client.clone();
        let r = c
            .history(self.dialer.request(req))
            .await
            .map_err(|s| status_error(&self.addr, s))?;
        Ok(r.into_inner())
    }
}

/// Every live logic, called round-robin. The set is replaced whole by
/// [`LogicPool::set`] (from discovery). Idempotent calls that find a logic
/// unreachable move on to the next one (not when the logic answered that an
/// engine they all share failed); `Connect` and `Receive` are tried once.
pub struct LogicPool {
    dialer: Dialer,
    logics: RwLock<Arc<Vec<RemoteLogic>>>,
    next: AtomicUsize,
}

impl LogicPool {
    /// An empty pool of plain clients (calls fail as unavailable until
    /// [`LogicPool::set`]).
    pub fn new(timeouts: ClientTimeouts) -> LogicPool {
        LogicPool::with_dialer(Dialer::new(timeouts))
    }

    /// An empty pool whose clients use `dialer` (token, TLS).
    pub fn with_dialer(dialer: Dialer) -> LogicPool {
        LogicPool {
            dialer,
            logics: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
        }
    }

    /// Replaces the set of logic addresses; clients of addresses still present are
    /// kept (with their connections).
    pub fn set(&self, addrs: &[String]) {
        let old = self.snapshot();
        let mut next = Vec::with_capacity(addrs.len());
        for a in addrs {
            if let Some(c) = old.iter().find(|c| c.addr() == a) {
                next.push(c.clone());
            } else {
                match RemoteLogic::dial(a, &self.dialer) {
                    Ok(c) => next.push(c),
                    Err(e) => tracing::warn!(addr = %a, error = %e, "logic address skipped"),
                }
            }
        }
        *self.logics.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    /// The addresses in the pool.
    pub fn addrs(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .map(|c| c.addr().to_string())
            .collect()
    }

    fn snapshot(&self) -> Arc<Vec<RemoteLogic>> {
        self.logics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn no_logic() -> RpcError {
        RpcError::unavailable("no logic is registered")
    }

    /// Calls `f` on the next logic; if `retry` and it is unreachable, on the
    /// following ones, each at most once. A failure of an engine every logic
    /// shares (the store) is not tried again on another.
    async fn call<T, F, Fut>(&self, retry: bool, f: F) -> RpcResult<T>
    where
        F: Fn(RemoteLogic) -> Fut,
        Fut: std::future::Future<Output = RpcResult<T>>,
    {
        let logics = self.snapshot();
        if logics.is_empty() {
            return Err(Self::no_logic());
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let tries = if retry { logics.len() } else { 1 };
        let mut last = Self::no_logic();
        for i in 0..tries {
            let c = logics[(start + i) % logics.len()].clone();
            match f(c).await {
                Err(e) if e.another_peer_may_help() => last = e,
                other => return other,
            }
        }
        Err(last)
    }
}

#[async_trait]
impl LogicService for LogicPool {
    async fn connect(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        self.call(false, |c| {
            let req = req.clone();
            async move { c.connect(req).await }
        })
        .await
    }

    async fn disconnect(&self, req: DisconnectReq) -> RpcResult<DisconnectReply> {
        self.call(true, |c| {
            let req = req.clone();
            async move { c.disconnect(req).await }
        })
        .await
    }

    async fn heartbeat(&self, req: HeartbeatReq) -> RpcResult<()> {
        self.call(true, |c| {
            let req = req.clone();
            async move { c.heartbeat(req).await }
        })
        .await
    }

    async fn renew_online(&self, req: OnlineReq) -> RpcResult<OnlineReply> {
        self.call(true, |c| {
            let req = req.clone();
            async move { c.renew_online(req).await }
        })
        .await
    }

    async fn receive(&self, req: ReceiveReq) -> RpcResult<ReceiveReply> {
        self.call(false, |c| {
            let req = req.clone();
            async move { c.receive(req).await }
        })
        .await
    }

    async fn nodes(&self, req: NodesReq) -> RpcResult<NodesReply> {
        self.call(true, |c| {
            let req = req.clone();
            async move { c.nodes(req).await }
        })
        .await
    }

    async fn refresh(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        // Writes nothing, so another logic may be tried.
        self.call(true, |c| {
            let req = req.clone();
            async move { c.refresh(req).await }
        })
        .await
    }

    async fn history(&self, req: HistoryReq) -> RpcResult<HistoryReply> {
        // Reads (it may create the stream's epoch, the same on any logic).
        self.call(true, |c| {
            let req = req.clone();
            async move { c.history(req).await }
        })
        .await
    }
}
