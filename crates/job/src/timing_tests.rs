//! job on tokio's paused clock: when room batches go out, how big they are, when
//! a room's task retires, when a message is acknowledged, where each kind of push
//! goes, and what shutdown waits for. Time only moves when every task waits on a
//! timer, so each assertion on time is exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_discovery::{Instance, LocalRegistry, Registration, Registry, COMET_APPID};
use herald_queue::{MemoryQueue, Queue};
use herald_rpc::{
    BroadcastReq, BroadcastRoomReq, CometService, PushMsg, PushMsgReq, PushType, RoomsReply,
    RpcResult,
};
use prost::Message;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::{CometConnector, Job, JobConfig};

/// One call a comet received, and when.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Room {
        room: String,
        bodies: Vec<String>,
    },
    Push {
        keys: Vec<String>,
        bodies: Vec<String>,
    },
    Broadcast {
        speed: i32,
        bodies: Vec<String>,
    },
}

fn bodies(raw: &[u8]) -> Vec<String> {
    herald_proto::raw::unpack(raw)
        .expect("a valid OpRaw body")
        .into_iter()
        .map(|f| String::from_utf8_lossy(&f.body).to_string())
        .collect()
}

/// A comet that records its calls (with the time since `start`) and, while
/// `gate` has no permit, holds them unanswered.
struct Recorder {
    start: Instant,
    calls: Mutex<Vec<(Duration, Call)>>,
    count: watch::Sender<usize>,
    gate: Option<Arc<Semaphore>>,
    /// Calls still to refuse as unreachable (each refusal recorded with its time).
    unreachable: Mutex<usize>,
    refused_at: Mutex<Vec<Duration>>,
    /// Each room call's epoch and offsets.
    room_positions: Mutex<Vec<(String, Vec<u64>)>>,
    /// Holds room calls only (after recording them) while it has no permit.
    room_gate: Option<Arc<Semaphore>>,
}

impl Recorder {
    fn new(gate: Option<Arc<Semaphore>>) -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            calls: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            gate,
            unreachable: Mutex::new(0),
            refused_at: Mutex::new(Vec::new()),
            room_positions: Mutex::new(Vec::new()),
            room_gate: None,
        })
    }

    /// A comet that answers key pushes and broadcasts at once and holds room
    /// calls while `gate` has no permit (one still writing a large room).
    fn holding_rooms(gate: Arc<Semaphore>) -> Arc<Recorder> {
        let mut r = Recorder::new(None);
        Arc::get_mut(&mut r).expect("not shared yet").room_gate = Some(gate);
        r
    }

    /// A comet that is unreachable for its first `n` calls.
    fn unreachable_for(n: usize) -> Arc<Recorder> {
        let r = Recorder::new(None);
        *r.unreachable.lock().unwrap() = n;
        r
    }

    async fn record(&self, call: Call) -> RpcResult<()> {
        let at = self.start.elapsed();
        {
            let mut left = self.unreachable.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                self.refused_at.lock().unwrap().push(at);
                return Err(herald_rpc::RpcError::unavailable("connection refused"));
            }
        }
        {
            let mut calls = self.calls.lock().unwrap();
            calls.push((at, call));
            self.count.send_replace(calls.len());
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        Ok(())
    }

    /// Waits until at least `n` calls arrived (failing, rather than hanging,
    /// after an hour of the paused clock).
    async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(Duration::from_secs(3600), rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} calls never arrived: {:?}", self.calls()))
            .expect("recorder alive");
    }

    fn calls(&self) -> Vec<(Duration, Call)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl CometService for Recorder {
    async fn push_msg(&self, r: PushMsgReq) -> RpcResult<()> {
        let raw = r.proto.map(|p| p.body).unwrap_or_default();
        self.record(Call::Push {
            keys: r.keys,
            bodies: bodies(&raw),
        })
        .await
    }
    async fn broadcast(&self, r: BroadcastReq) -> RpcResult<()> {
        let raw = r.proto.map(|p| p.body).unwrap_or_default();
        self.record(Call::Broadcast {
            speed: r.speed,
            bodies: bodies(&raw),
        })
        .await
    }
    async fn broadcast_room(&self, r: BroadcastRoomReq) -> RpcResult<()> {
        self.room_positions
            .lock()
            .unwrap()
            .push((r.epoch.clone(), r.offsets.clone()));
        let raw = r.proto.map(|p| p.body).unwrap_or_default();
        self.record(Call::Room {
            room: r.room_id,
            bodies: bodies(&raw),
        })
        .await?;
        if let Some(gate) = &self.room_gate {
            gate.acquire().await.expect("gate open").forget();
        }
        Ok(())
    }
    async fn rooms(&self) -> RpcResult<RoomsReply> {
        Ok(Default::default())
    }
}

/// Comets by server id.
struct Comets(Vec<(String, Arc<Recorder>)>);

impl CometConnector for Comets {
    fn connect(&self, i: &Instance) -> Option<Arc<dyn CometService>> {
        self.0
            .iter()
            .find(|(id, _)| *id == i.hostname)
            .map(|(_, r)| r.clone() as Arc<dyn CometService>)
    }
}

struct Setup {
    job: Job,
    queue: Arc<MemoryQueue>,
    _registrations: Vec<Box<dyn Registration>>,
}

async fn start(cfg: JobConfig, comets: &[(&str, Arc<Recorder>)]) -> Setup {
    let registry = LocalRegistry::new();
    let mut registrations = Vec::new();
    for (id, _) in comets {
        registrations.push(
            registry
                .register(Instance {
                    appid: COMET_APPID.into(),
                    hostname: id.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
    }
    let queue = Arc::new(MemoryQueue::new(1024, Duration::from_secs(1)));
    let connector = Comets(
        comets
            .iter()
            .map(|(id, r)| (id.to_string(), r.clone()))
            .collect(),
    );
    let job = Job::start(
        cfg,
        "job-under-test".into(),
        queue.clone(),
        Arc::new(registry),
        Arc::new(connector),
    )
    .await
    .unwrap();
    Setup {
        job,
        queue,
        _registrations: registrations,
    }
}

fn msg(m: PushMsg) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

async fn room(q: &MemoryQueue, room: &str, body: &str) {
    let m = PushMsg {
        r#type: PushType::Room as i32,
        operation: 1000,
        room: room.into(),
        msg: Bytes::from(body.to_string()),
        ..Default::default()
    };
    q.publish(room, msg(m)).await.unwrap();
}

/// Waits (on the paused clock) until every message was acknowledged.
async fn until_acknowledged(q: &MemoryQueue) -> Duration {
    let start = Instant::now();
    while q.depth() != Some(0) {
        assert!(
            start.elapsed() < Duration::from_secs(3600),
            "never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn room_call(room: &str, bodies: &[&str]) -> Call {
    Call::Room {
        room: room.into(),
        bodies: bodies.iter().map(|b| b.to_string()).collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_room_message_goes_out_at_once() {
    let comet = Recorder::new(None);
    let s = start(JobConfig::default(), &[("c1", comet.clone())]).await;
    room(&s.queue, "live://1", "m0").await;
    comet.wait_for(1).await;
    assert_eq!(
        comet.calls(),
        [(Duration::ZERO, room_call("live://1", &["m0"]))]
    );
    assert_eq!(until_acknowledged(&s.queue).await, Duration::ZERO);
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_window_gathers_a_room_batch_and_the_cap_splits_it() {
    let comet = Recorder::new(None);
    let cfg = JobConfig {
        room_window: Duration::from_millis(500),
        room_batch: 3,
        ..Default::default()
    };
    let s = start(cfg, &[("c1", comet.clone())]).await;
    for i in 0..7 {
        room(&s.queue, "live://1", &format!("m{i}")).await;
    }
    comet.wait_for(3).await;
    // Full batches leave at once; the rest waits out the window.
    assert_eq!(
        comet.calls(),
        [
            (Duration::ZERO, room_call("live://1", &["m0", "m1", "m2"])),
            (Duration::ZERO, room_call("live://1", &["m3", "m4", "m5"])),
            (Duration::from_millis(500), room_call("live://1", &["m6"])),
        ]
    );
    until_acknowledged(&s.queue).await;
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_room_retires_and_its_next_message_still_follows_in_order() {
    let comet = Recorder::new(None);
    let cfg = JobConfig {
        room_idle: Duration::from_secs(2),
        ..Default::default()
    };
    let s = start(cfg, &[("c1", comet.clone())]).await;
    room(&s.queue, "live://1", "before").await;
    comet.wait_for(1).await;
    // Well past room_idle: the room's task has retired.
    tokio::time::sleep(Duration::from_secs(5)).await;
    room(&s.queue, "live://1", "after").await;
    room(&s.queue, "live://1", "later").await;
    comet.wait_for(2).await;
    let bodies: Vec<String> = comet
        .calls()
        .into_iter()
        .flat_map(|(_, c)| match c {
            Call::Room { bodies, .. } => bodies,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(bodies, ["before", "after", "later"]);
    assert_eq!(comet.calls()[1].0, Duration::from_secs(5));
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_room_message_is_acknowledged_only_when_every_comet_has_it() {
    let fast = Recorder::new(None);
    let gate = Arc::new(Semaphore::new(0));
    let slow = Recorder::new(Some(gate.clone()));
    let s = start(
        JobConfig::default(),
        &[("c1", fast.clone()), ("c2", slow.clone())],
    )
    .await;
    room(&s.queue, "live://1", "m0").await;
    fast.wait_for(1).await;
    slow.wait_for(1).await;
    // c2 holds its call for a minute: the message stays unacknowledged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.queue.depth(), Some(1));
    gate.add_permits(1);
    until_acknowledged(&s.queue).await;
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_comet_that_never_answers_is_given_up_after_comet_timeout() {
    let hung = Recorder::new(Some(Arc::new(Semaphore::new(0))));
    let cfg = JobConfig {
        comet_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let s = start(cfg, &[("c1", hung.clone())]).await;
    room(&s.queue, "live://1", "m0").await;
    hung.wait_for(1).await;
    // Acknowledged (and counted as a dispatch error) when the call times out.
    let took = until_acknowledged(&s.queue).await;
    assert!(
        (Duration::from_secs(3)..Duration::from_millis(3010)).contains(&took),
        "acknowledged after {took:?}"
    );
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_push_goes_to_its_comet_only_and_a_broadcast_shares_its_speed() {
    let (c1, c2) = (Recorder::new(None), Recorder::new(None));
    let s = start(
        JobConfig::default(),
        &[("c1", c1.clone()), ("c2", c2.clone())],
    )
    .await;
    let push = PushMsg {
        r#type: PushType::Push as i32,
        operation: 1000,
        server: "c2".into(),
        keys: vec!["k1".into(), "k2".into()],
        msg: Bytes::from_static(b"to-keys"),
        ..Default::default()
    };
    s.queue.publish("k1", msg(push)).await.unwrap();
    c2.wait_for(1).await;
    assert_eq!(
        c2.calls()[0].1,
        Call::Push {
            keys: vec!["k1".into(), "k2".into()],
            bodies: vec!["to-keys".into()],
        }
    );
    for (i, (speed, each)) in [(10, 5), (1, 1), (0, 0), (-1, 0)].into_iter().enumerate() {
        let b = PushMsg {
            r#type: PushType::Broadcast as i32,
            operation: 1000,
            speed,
            msg: Bytes::from(format!("all-{speed}")),
            ..Default::default()
        };
        s.queue.publish("", msg(b)).await.unwrap();
        let body = format!("all-{speed}");
        // c2 also had the key push before the broadcasts.
        for (c, before) in [(&c1, 0), (&c2, 1)] {
            let n = before + i;
            c.wait_for(n + 1).await;
            assert_eq!(
                c.calls()[n].1,
                Call::Broadcast {
                    speed: each,
                    bodies: vec![body.clone()],
                },
                "speed {speed} over two comets"
            );
        }
    }
    // The key push went to c2 only.
    assert!(c1
        .calls()
        .iter()
        .all(|(_, c)| !matches!(c, Call::Push { .. })));
    s.job.shutdown().await;
}

/// A comet still busy with a room batch (a large room) gets the key pushes,
/// the broadcasts and the other rooms' batches queued after it at once: each
/// kind of work has its own lane, and rooms are called side by side.
#[tokio::test(start_paused = true)]
async fn a_room_batch_in_flight_holds_up_no_key_push_broadcast_or_other_room() {
    let gate = Arc::new(Semaphore::new(0));
    let comet = Recorder::holding_rooms(gate.clone());
    let s = start(JobConfig::default(), &[("c1", comet.clone())]).await;
    room(&s.queue, "live://big", "r0").await;
    comet.wait_for(1).await;
    let push = PushMsg {
        r#type: PushType::Push as i32,
        operation: 1000,
        server: "c1".into(),
        keys: vec!["k1".into()],
        msg: Bytes::from_static(b"to-k1"),
        ..Default::default()
    };
    s.queue.publish("k1", msg(push)).await.unwrap();
    let all = PushMsg {
        r#type: PushType::Broadcast as i32,
        operation: 1000,
        msg: Bytes::from_static(b"to-all"),
        ..Default::default()
    };
    s.queue.publish("", msg(all)).await.unwrap();
    room(&s.queue, "live://small", "s0").await;
    // All three arrive while the big room's call is still unanswered (the
    // paused clock has not moved: nothing waited for it).
    comet.wait_for(4).await;
    let calls = comet.calls();
    assert!(calls.iter().all(|(at, _)| at.is_zero()), "{calls:?}");
    assert!(calls.contains(&(
        Duration::ZERO,
        Call::Push {
            keys: vec!["k1".into()],
            bodies: vec!["to-k1".into()],
        }
    )));
    assert!(calls.contains(&(Duration::ZERO, room_call("live://small", &["s0"]))));
    // The big room's next message waits for its batch in flight (one batch per
    // room at a time keeps the room's order), then follows it.
    room(&s.queue, "live://big", "r1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(comet.calls().len(), 4);
    gate.add_permits(3);
    comet.wait_for(5).await;
    assert_eq!(comet.calls()[4].1, room_call("live://big", &["r1"]));
    until_acknowledged(&s.queue).await;
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_until_what_was_taken_is_acknowledged() {
    let gate = Arc::new(Semaphore::new(0));
    let comet = Recorder::new(Some(gate.clone()));
    let cfg = JobConfig {
        comet_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let s = start(cfg, &[("c1", comet.clone())]).await;
    room(&s.queue, "live://1", "m0").await;
    comet.wait_for(1).await;
    let queue = s.queue.clone();
    let mut shutdown = tokio::spawn(s.job.shutdown());
    // A minute later it is still waiting for the comet.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut shutdown)
            .await
            .is_err(),
        "shutdown returned with a message in flight"
    );
    assert_eq!(queue.depth(), Some(1));
    gate.add_permits(1);
    shutdown.await.unwrap();
    assert_eq!(queue.depth(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_comet_is_tried_again_within_the_window() {
    // Refused three times: tried again after 50, 100 and 200 ms.
    let comet = Recorder::unreachable_for(3);
    let s = start(JobConfig::default(), &[("c1", comet.clone())]).await;
    room(&s.queue, "live://1", "m0").await;
    comet.wait_for(1).await;
    assert_eq!(
        comet.calls(),
        [(Duration::from_millis(350), room_call("live://1", &["m0"]))]
    );
    assert_eq!(
        *comet.refused_at.lock().unwrap(),
        [0, 50, 150].map(Duration::from_millis)
    );
    until_acknowledged(&s.queue).await;
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_comet_unreachable_beyond_the_window_is_given_up_and_the_message_acknowledged() {
    let comet = Recorder::unreachable_for(usize::MAX);
    let cfg = JobConfig {
        comet_retry: Duration::from_secs(1),
        ..Default::default()
    };
    let s = start(cfg, &[("c1", comet.clone())]).await;
    room(&s.queue, "live://1", "m0").await;
    let took = until_acknowledged(&s.queue).await;
    // Tries at 0, 50, 150, 350 and 750 ms; the next pause (800 ms) would end
    // past the window.
    assert_eq!(
        *comet.refused_at.lock().unwrap(),
        [0, 50, 150, 350, 750].map(Duration::from_millis)
    );
    // (acknowledgement is polled every millisecond)
    assert!(
        (Duration::from_millis(750)..Duration::from_millis(752)).contains(&took),
        "{took:?}"
    );
    assert!(comet.calls().is_empty());
    // The comet is still down: the next call is tried once, not for another
    // window; once one gets through, retries are back.
    room(&s.queue, "live://1", "m1").await;
    until_acknowledged(&s.queue).await;
    assert_eq!(comet.refused_at.lock().unwrap().len(), 6);
    *comet.unreachable.lock().unwrap() = 0;
    room(&s.queue, "live://1", "m2").await;
    comet.wait_for(1).await;
    *comet.unreachable.lock().unwrap() = 1;
    room(&s.queue, "live://1", "m3").await;
    comet.wait_for(2).await;
    assert_eq!(comet.refused_at.lock().unwrap().len(), 7);
    s.job.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn room_batches_carry_offsets_and_never_mix_epochs() {
    let comet = Recorder::new(None);
    let cfg = JobConfig {
        room_window: Duration::from_millis(100),
        ..Default::default()
    };
    let s = start(cfg, &[("c1", comet.clone())]).await;
    for (epoch, offset) in [("a", 7), ("a", 8), ("b", 1), ("b", 2)] {
        let m = PushMsg {
            r#type: PushType::Room as i32,
            operation: 1000,
            room: "chat://1".into(),
            msg: Bytes::from(format!("{epoch}{offset}")),
            position: Some(herald_rpc::Position {
                stream: "chat://1".into(),
                epoch: epoch.into(),
                offset,
            }),
            ..Default::default()
        };
        s.queue.publish("chat://1", msg(m)).await.unwrap();
    }
    room(&s.queue, "chat://1", "plain").await;
    comet.wait_for(3).await;
    assert_eq!(
        *comet.room_positions.lock().unwrap(),
        [
            ("a".to_string(), vec![7, 8]),
            ("b".to_string(), vec![1, 2]),
            (String::new(), vec![]),
        ]
    );
    let bodies: Vec<Call> = comet.calls().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        bodies,
        [
            room_call("chat://1", &["a7", "a8"]),
            room_call("chat://1", &["b1", "b2"]),
            room_call("chat://1", &["plain"]),
        ]
    );
    until_acknowledged(&s.queue).await;
    s.job.shutdown().await;
}
