//! The tiers over real gRPC on loopback: goim's method paths, field values end to
//! end, error classes, deadlines, gzip requests, and the logic pool's retries.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_rpc::goim::logic::logic_client::LogicClient;
use herald_rpc::grpc::{self, ClientTimeouts, LogicPool, RemoteComet, RemoteLogic};
use herald_rpc::*;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// A logic that records what it is asked and answers from it.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    /// Heartbeats fail as a logic's do when the shared store is down.
    store_down: bool,
}

impl Recorder {
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl LogicService for Recorder {
    async fn connect(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        if req.token.is_empty() {
            return Err(RpcError::invalid("empty token"));
        }
        self.log(format!("connect {} {}", req.server, req.cookie));
        Ok(ConnectReply {
            mid: 42,
            key: "k1".into(),
            room_id: "live://7".into(),
            accepts: vec![1000, 1001],
            heartbeat: 480_000_000_000,
            grant: None,
            answered: false,
        })
    }
    async fn refresh(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        self.log(format!("refresh {} {}", req.server, req.client_addr));
        Ok(ConnectReply {
            mid: 42,
            key: "k1".into(),
            grant: Some(herald_rpc::Grant {
                rooms: vec!["live://*".into()],
                ops: vec![1000],
                expires_at: 1_900_000_000,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
    async fn disconnect(&self, req: DisconnectReq) -> RpcResult<DisconnectReply> {
        self.log(format!("disconnect {} {} {}", req.mid, req.key, req.server));
        Ok(DisconnectReply { has: true })
    }
    async fn heartbeat(&self, req: HeartbeatReq) -> RpcResult<()> {
        self.log(format!("heartbeat {}", req.key));
        if self.store_down {
            return Err(RpcError::engine_unavailable(
                "redis store",
                "redis store unavailable: connection refused",
            ));
        }
        Ok(())
    }
    async fn renew_online(&self, req: OnlineReq) -> RpcResult<OnlineReply> {
        self.log(format!("online {}", req.server));
        Ok(OnlineReply {
            all_room_count: req.room_count,
        })
    }
    async fn receive(&self, req: ReceiveReq) -> RpcResult<ReceiveReply> {
        self.log(format!(
            "receive {} {:?}",
            req.mid,
            req.proto.map(|p| p.body)
        ));
        Ok(ReceiveReply::default())
    }
    async fn nodes(&self, req: NodesReq) -> RpcResult<NodesReply> {
        if req.platform == "slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(NodesReply {
            domain: "example.org".into(),
            nodes: vec!["10.0.0.1".into()],
            heartbeat: 240,
            ..Default::default()
        })
    }
}

/// A comet that records pushes.
#[derive(Default)]
struct CometRecorder(Mutex<Vec<String>>);

#[async_trait]
impl CometService for CometRecorder {
    async fn push_msg(&self, req: PushMsgReq) -> RpcResult<()> {
        let body = req.proto.map(|p| p.body).unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push(format!("push {:?} {} {:?}", req.keys, req.proto_op, body));
        Ok(())
    }
    async fn broadcast(&self, req: BroadcastReq) -> RpcResult<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("broadcast {} {}", req.proto_op, req.speed));
        Ok(())
    }
    async fn broadcast_room(&self, req: BroadcastRoomReq) -> RpcResult<()> {
        self.0.lock().unwrap().push(format!("room {}", req.room_id));
        Ok(())
    }
    async fn rooms(&self) -> RpcResult<RoomsReply> {
        Ok(RoomsReply {
            rooms: HashMap::from([("live://1".to_string(), true)]),
        })
    }
}

async fn serve(routes: tonic::service::Routes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

async fn serve_logic(l: Arc<Recorder>) -> SocketAddr {
    serve(tonic::service::Routes::new(grpc::logic_server(l))).await
}

fn timeouts() -> ClientTimeouts {
    ClientTimeouts {
        connect: Duration::from_millis(500),
        call: Duration::from_millis(500),
    }
}

fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("grpc://{a}")
}

#[tokio::test]
async fn logic_calls_carry_every_field() {
    let rec = Arc::new(Recorder::default());
    let addr = serve_logic(rec.clone()).await;
    let c = RemoteLogic::new(&format!("grpc://{addr}"), timeouts()).unwrap();
    let reply = c
        .connect(ConnectReq {
            server: "comet-1:3109".into(),
            cookie: "c=1".into(),
            token: Bytes::from_static(br#"{"mid":42}"#),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.mid, 42);
    assert_eq!(reply.key, "k1");
    assert_eq!(reply.room_id, "live://7");
    assert_eq!(reply.accepts, vec![1000, 1001]);
    assert_eq!(reply.heartbeat, 480_000_000_000);
    let has = c
        .disconnect(DisconnectReq {
            mid: 42,
            key: "k1".into(),
            server: "comet-1:3109".into(),
        })
        .await
        .unwrap();
    assert!(has.has);
    let online = c
        .renew_online(OnlineReq {
            server: "comet-1:3109".into(),
            room_count: HashMap::from([("live://7".into(), 3)]),
        })
        .await
        .unwrap();
    assert_eq!(online.all_room_count.get("live://7"), Some(&3));
    c.receive(ReceiveReq {
        mid: 42,
        proto: Some(Proto {
            ver: 1,
            op: 4,
            seq: 9,
            body: Bytes::from_static(b"up"),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let nodes = c.nodes(NodesReq::default()).await.unwrap();
    assert_eq!(nodes.nodes, vec!["10.0.0.1"]);
    assert_eq!(nodes.heartbeat, 240);
    // herald's additions travel too: the client address and headers out, the grant back.
    let refreshed = c
        .refresh(ConnectReq {
            server: "comet-1:3109".into(),
            client_addr: "203.0.113.7:5000".into(),
            headers: HashMap::from([("user-agent".into(), "t".into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    let grant = refreshed.grant.expect("grant");
    assert_eq!(grant.rooms, ["live://*"]);
    assert_eq!((grant.ops, grant.expires_at), (vec![1000], 1_900_000_000));
    assert!(!grant.any_room && !grant.any_op);
    assert_eq!(
        rec.calls(),
        [
            "connect comet-1:3109 c=1",
            "disconnect 42 k1 comet-1:3109",
            "online comet-1:3109",
            "receive 42 Some(b\"up\")",
            "refresh comet-1:3109 203.0.113.7:5000",
        ]
    );
}

#[tokio::test]
async fn errors_keep_their_class() {
    let addr = serve_logic(Arc::new(Recorder::default())).await;
    let c = RemoteLogic::new(&addr.to_string(), timeouts()).unwrap();
    let err = c.connect(ConnectReq::default()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("empty token"), "{err}");

    // A call that outlives its deadline fails instead of hanging.
    let started = std::time::Instant::now();
    let err = c
        .nodes(NodesReq {
            platform: "slow".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(
            err.kind,
            ErrorKind::DeadlineExceeded | ErrorKind::Unavailable
        ),
        "{err}"
    );

    // Nobody listening: unavailable (so a pool may try another logic).
    let dead = RemoteLogic::new(&dead_addr(), timeouts()).unwrap();
    let err = dead.heartbeat(HeartbeatReq::default()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn pool_retries_only_idempotent_calls() {
    let rec = Arc::new(Recorder::default());
    let live = format!("grpc://{}", serve_logic(rec.clone()).await);
    let pool = LogicPool::new(timeouts());
    let err = pool.heartbeat(HeartbeatReq::default()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "empty pool: {err}");

    pool.set(&[dead_addr(), live.clone()]);
    let token = Bytes::from_static(b"{}");
    // Heartbeats always succeed: a dead logic is skipped.
    for i in 0..4 {
        pool.heartbeat(HeartbeatReq {
            key: format!("h{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Connect is tried once: when its turn lands on the dead logic (every other
    // call, round-robin) it fails.
    let mut connect_failures = 0;
    for _ in 0..4 {
        if pool
            .connect(ConnectReq {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .is_err()
        {
            connect_failures += 1;
        }
    }
    let calls = rec.calls();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("heartbeat")).count(),
        4
    );
    assert_eq!(connect_failures, 2, "{calls:?}");
    assert_eq!(pool.addrs().len(), 2);
    pool.set(std::slice::from_ref(&live));
    assert_eq!(pool.addrs(), [live]);
}

/// When the store every logic shares is down, a logic says so and the pool does
/// not ask the next logic, which would fail the same way; the error still says
/// which engine failed.
#[tokio::test]
async fn a_shared_store_outage_is_not_retried_on_another_logic() {
    let down = || {
        Arc::new(Recorder {
            store_down: true,
            ..Default::default()
        })
    };
    let (a, b) = (down(), down());
    let pool = LogicPool::new(timeouts());
    pool.set(&[
        format!("grpc://{}", serve_logic(a.clone()).await),
        format!("grpc://{}", serve_logic(b.clone()).await),
    ]);
    for i in 0..4 {
        let err = pool
            .heartbeat(HeartbeatReq {
                key: format!("h{i}"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        assert_eq!(err.engine.as_deref(), Some("redis store"), "{err}");
        assert!(err.message.contains("connection refused"), "{err}");
        assert!(!err.another_peer_may_help());
    }
    // Round-robin: each heartbeat reached one logic, never both.
    assert_eq!(a.calls().len() + b.calls().len(), 4);
    assert_eq!(a.calls().len(), 2, "{:?} / {:?}", a.calls(), b.calls());
}

/// goim's comet compresses RenewOnline with gzip; logic accepts it.
#[tokio::test]
async fn gzip_requests_are_accepted() {
    let addr = serve_logic(Arc::new(Recorder::default())).await;
    let channel = grpc::channel(&addr.to_string(), timeouts()).unwrap();
    let mut client =
        LogicClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let reply = client
        .renew_online(OnlineReq {
            server: "goim-comet".into(),
            room_count: HashMap::from([("live://1".into(), 5)]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.all_room_count.get("live://1"), Some(&5));
}

/// The comet service answers on goim's exact method paths, called here without
/// the generated client.
#[tokio::test]
async fn comet_answers_on_goims_method_paths() {
    let rec = Arc::new(CometRecorder::default());
    let addr = serve(tonic::service::Routes::new(grpc::comet_server(rec.clone()))).await;
    let channel = grpc::channel(&addr.to_string(), timeouts()).unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/goim.comet.Comet/PushMsg");
    let _: tonic::Response<comet::PushMsgReply> = raw
        .unary(
            tonic::Request::new(PushMsgReq {
                keys: vec!["k1".into(), "k2".into()],
                proto: Some(Proto::raw(Bytes::from_static(b"frames"))),
                proto_op: 1000,
                ..Default::default()
            }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap();

    let c = RemoteComet::new(&format!("grpc://{addr}"), timeouts()).unwrap();
    c.broadcast(BroadcastReq {
        proto_op: 1000,
        proto: Some(Proto::raw(Bytes::new())),
        speed: 10,
    })
    .await
    .unwrap();
    c.broadcast_room(BroadcastRoomReq {
        room_id: "live://1".into(),
        proto: Some(Proto::raw(Bytes::new())),
        ..Default::default()
    })
    .await
    .unwrap();
    let rooms = c.rooms().await.unwrap();
    assert_eq!(rooms.rooms.get("live://1"), Some(&true));
    // goim's checks: a room push without a room id is refused.
    let err = c
        .broadcast_room(BroadcastRoomReq {
            room_id: String::new(),
            proto: Some(Proto::raw(Bytes::new())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "push [\"k1\", \"k2\"] 1000 b\"frames\"",
            "broadcast 1000 10",
            "room live://1",
        ]
    );
}
