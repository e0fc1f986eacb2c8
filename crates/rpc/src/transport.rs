//! Protection of the gRPC traffic between tiers: a shared token and TLS.
//!
//! A [`Dialer`] is how a process's clients reach other tiers: call deadlines, the
//! cluster token sent as `authorization: Bearer <token>` on every call, and TLS
//! for addresses registered as `grpcs://`. [`serve`] runs a tier's gRPC services
//! on a listener, plain or TLS (certificates from `herald-tls`, reloadable), and
//! with a token configured refuses every call that does not carry it
//! ([`RequireToken`], compared in constant time) with `Unauthenticated`.
//!
//! Address forms: `grpc://host:port` (goim's registry form), `http://host:port`
//! or `host:port` are plain HTTP/2; `grpcs://host:port` or `https://host:port`
//! are HTTP/2 over TLS. A dialer with TLS refuses plain addresses unless told to
//! accept them (a cluster moving to TLS), so neither the token nor the calls
//! travel in the clear by accident.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_tls::transport::{TlsConnector, TlsIncoming};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::{Interceptor, InterceptorLayer, Routes};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::grpc::ClientTimeouts;
use crate::{RpcError, RpcResult};

/// The metadata key carrying the token (HTTP's `Authorization` header).
const AUTHORIZATION: &str = "authorization";

/// Whether `addr` names a TLS endpoint, and its `host:port`.
fn split_addr(addr: &str) -> (bool, &str) {
    for (prefix, tls) in [
        ("grpcs://", true),
        ("https://", true),
        ("grpc://", false),
        ("http://", false),
    ] {
        if let Some(rest) = addr.strip_prefix(prefix) {
            return (tls, rest);
        }
    }
    (false, addr)
}

/// `Bearer <token>` as a metadata value; the token must be printable ASCII
/// without spaces (it travels in an HTTP/2 header).
fn bearer(token: &str) -> RpcResult<AsciiMetadataValue> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RpcError::invalid(
            "the RPC token must be non-empty printable ASCII without spaces",
        ));
    }
    AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|e| RpcError::invalid(format!("unusable RPC token: {e}")))
}

/// How this process's gRPC clients reach other tiers. Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    timeouts: ClientTimeouts,
    /// `Bearer <token>`, sent on every call when the cluster has a token.
    authorization: Option<AsciiMetadataValue>,
    /// TLS for `grpcs://` addresses.
    tls: Option<TlsConnector>,
    /// Whether plain addresses are still dialled although TLS is configured.
    allow_plain: bool,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: only say whether there is one.
        f.debug_struct("Dialer")
            .field("timeouts", &self.timeouts)
            .field("token", &self.authorization.is_some())
            .field("tls", &self.tls.is_some())
            .field("allow_plain", &self.allow_plain)
            .finish()
    }
}

impl Dialer {
    /// Plain gRPC without a token (goim's behaviour).
    pub fn new(timeouts: ClientTimeouts) -> Dialer {
        Dialer {
            timeouts,
            authorization: None,
            tls: None,
            allow_plain: true,
        }
    }

    /// Sends `token` on every call (empty = none).
    pub fn with_token(mut self, token: &str) -> RpcResult<Dialer> {
        self.authorization = if token.is_empty() {
            None
        } else {
            Some(bearer(token)?)
        };
        Ok(self)
    }

    /// Dials `grpcs://` addresses with `tls`; plain addresses are refused unless
    /// `allow_plain`.
    pub fn with_tls(mut self, tls: TlsConnector, allow_plain: bool) -> Dialer {
        self.tls = Some(tls);
        self.allow_plain = allow_plain;
        self
    }

    /// The deadlines of this dialer's calls.
    pub fn timeouts(&self) -> ClientTimeouts {
        self.timeouts
    }

    /// A lazily connected channel to `addr` (the first call connects; a broken
    /// connection is re-established by the next call).
    pub fn channel(&self, addr: &str) -> RpcResult<Channel> {
        let (tls, hostport) = split_addr(addr);
        let scheme = if tls { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{hostport}"))
            .map_err(|e| RpcError::invalid(format!("bad RPC address {addr:?}: {e}")))?
            .connect_timeout(self.timeouts.connect)
            .timeout(self.timeouts.call)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        match (&self.tls, tls) {
            (Some(connector), true) => Ok(endpoint.connect_with_connector_lazy(connector.clone())),
            (None, true) => Err(RpcError::invalid(format!(
                "{addr} serves TLS but this process has no TLS client settings (rpc.tls.ca_file)"
            ))),
            (Some(_), false) if !self.allow_plain => Err(RpcError::invalid(format!(
                "{addr} is plain gRPC but this process requires TLS (rpc.tls.ca_file is set \
                 and rpc.tls.allow_plain is false)"
            ))),
            _ => Ok(endpoint.connect_lazy()),
        }
    }

    /// A request for `msg` with this dialer's call deadline and token.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeouts.call);
        if let Some(a) = &self.authorization {
            r.metadata_mut().insert(AUTHORIZATION, a.clone());
        }
        r
    }
}

/// Refuses calls without the cluster token (`Unauthenticated`); lets every call
/// through when no token is configured.
#[derive(Clone, Default)]
pub struct RequireToken {
    /// `Bearer <token>` as bytes.
    expected: Option<Arc<[u8]>>,
}

impl RequireToken {
    /// Requires `token` (empty = nothing required).
    pub fn new(token: &str) -> RpcResult<RequireToken> {
        Ok(RequireToken {
            expected: if token.is_empty() {
                None
            } else {
                Some(bearer(token)?.as_bytes().into())
            },
        })
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let Some(given) = req.metadata().get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this server requires the cluster token (authorization: Bearer …)",
            ));
        };
        // Constant time, so the comparison does not tell how much of a guess was
        // right (only the length can differ in time).
        if bool::from(given.as_bytes().ct_eq(expected)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("wrong cluster token"))
        }
    }
}

/// How [`serve`] protects a listener.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// The cluster token every call must carry (empty = none).
    pub token: String,
    /// TLS on the listener (ALPN `h2`; a client CA in it means mutual TLS).
    pub tls: Option<Arc<herald_tls::rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("token", &!self.token.is_empty())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Serves `routes` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> RpcResult<()> {
    let check = RequireToken::new(&options.token)?;
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(InterceptorLayer::new(check))
        .add_routes(routes);
    let r = match options.tls {
        Some(config) => {
            server
                .serve_with_incoming_shutdown(TlsIncoming::new(listener, config), shutdown)
                .await
        }
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    r.map_err(|e| RpcError::internal(format!("gRPC server failed: {e}")))
}
