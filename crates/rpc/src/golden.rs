//! Golden bytes of every message goim's processes and herald's exchange: each
//! populated message is encoded and compared with bytes written out by hand from
//! the protobuf encoding rules (a key is `field number << 3 | wire type`: 0 varint,
//! 2 length-delimited, 5 fixed32), and those bytes decode back to the message.
//!
//! The field numbers and types are goim's (`api/protocol`, `api/comet`,
//! `api/logic`); herald's additions use numbers from 16 up. Proto3 scalars at
//! their default value are not written, repeated scalars are packed, and a map
//! is a repeated entry message `{ key = 1; value = 2; }`.

use std::collections::HashMap;
use std::fmt::Debug;

use bytes::Bytes;
use prost::Message;

use crate::comet::*;
use crate::logic::*;
use crate::protocol::{Position, Proto};

/// `msg` encodes to exactly `wire`, and `wire` decodes to `msg`.
#[track_caller]
fn golden<M: Message + Default + PartialEq + Debug>(msg: &M, wire: &[u8]) {
    assert_eq!(msg.encode_to_vec(), wire, "encoding of {msg:?}");
    assert_eq!(&M::decode(wire).expect("decodes"), msg, "decoding");
}

/// A frame used inside the requests below: ver=1 (key 0x08), op=9 (0x10),
/// body="x" (0x22, length 1); seq=0 is not written.
fn raw_x() -> Proto {
    Proto::raw(Bytes::from_static(b"x"))
}
const RAW_X: [u8; 7] = [0x08, 0x01, 0x10, 0x09, 0x22, 0x01, b'x'];

// goim.protocol ---------------------------------------------------------------

#[test]
fn proto() {
    let p = Proto {
        ver: 1,
        op: 4,
        seq: 7,
        body: Bytes::from_static(b"ab"),
    };
    // ver=1 (1 VARINT), op=2, seq=3, body=4 (LEN).
    golden(&p, &[0x08, 1, 0x10, 4, 0x18, 7, 0x22, 2, b'a', b'b']);
    golden(&raw_x(), &RAW_X);
    golden(&Proto::default(), &[]);
}

// goim.comet ------------------------------------------------------------------

#[test]
fn comet_push_msg() {
    let req = PushMsgReq {
        keys: vec!["k1".into(), "k2".into()],
        proto: Some(raw_x()),
        proto_op: 1000,
        position: None,
    };
    // keys=1 (LEN, once per key), proto=2 (LEN), protoOp=3 (VARINT 1000 = e8 07).
    golden(
        &req,
        &[
            &[0x0a, 2][..],
            b"k1",
            &[0x0a, 2],
            b"k2",
            &[0x12, 7],
            &RAW_X,
            &[0x18, 0xe8, 0x07],
        ]
        .concat(),
    );
    golden(&PushMsgReply {}, &[]);
}

#[test]
fn comet_broadcast() {
    let req = BroadcastReq {
        proto_op: 1000,
        proto: Some(raw_x()),
        speed: 50,
    };
    // protoOp=1 (VARINT), proto=2 (LEN), speed=3 (VARINT 50 = 0x32).
    golden(
        &req,
        &[&[0x08, 0xe8, 0x07, 0x12, 7][..], &RAW_X, &[0x18, 0x32]].concat(),
    );
    golden(&BroadcastReply {}, &[]);
}

#[test]
fn comet_broadcast_room() {
    let req = BroadcastRoomReq {
        room_id: "live://1".into(),
        proto: Some(raw_x()),
        epoch: String::new(),
        offsets: vec![],
    };
    // roomID=1 (LEN), proto=2 (LEN); herald's epoch and offsets absent.
    golden(
        &req,
        &[&[0x0a, 8][..], b"live://1", &[0x12, 7], &RAW_X].concat(),
    );
    golden(&BroadcastRoomReply {}, &[]);
}

#[test]
fn comet_broadcast_room_with_positions() {
    let req = BroadcastRoomReq {
        room_id: "r".into(),
        proto: None,
        epoch: "e".into(),
        offsets: vec![7, 300],
    };
    // roomID=1 (LEN); epoch=16 (LEN: tag 0x82 0x01); offsets=17, packed
    // (LEN: tag 0x8a 0x01; 7, 300 = ac 02).
    golden(
        &req,
        &[
            &[0x0a, 1, b'r', 0x82, 0x01, 1, b'e'][..],
            &[0x8a, 0x01, 3, 7, 0xac, 0x02],
        ]
        .concat(),
    );
}

#[test]
fn comet_push_msg_with_position() {
    let req = PushMsgReq {
        keys: vec!["k".into()],
        proto: None,
        proto_op: 0,
        position: Some(Position {
            stream: "mid:1".into(),
            epoch: "e".into(),
            offset: 2,
        }),
    };
    // keys=1 (LEN); position=16 (LEN: tag 0x82 0x01, 12 bytes): stream=1 (LEN),
    // epoch=2 (LEN), offset=3 (VARINT).
    golden(
        &req,
        &[
            &[0x0a, 1, b'k', 0x82, 0x01, 12, 0x0a, 5][..],
            b"mid:1",
            &[0x12, 1, b'e', 0x18, 2],
        ]
        .concat(),
    );
}

#[test]
fn comet_rooms() {
    golden(&RoomsReq {}, &[]);
    let reply = RoomsReply {
        rooms: HashMap::from([("live://1".to_string(), true)]),
    };
    // rooms=1 (LEN): one entry { key=1 (LEN), value=2 (VARINT) }, 12 bytes.
    golden(
        &reply,
        &[&[0x0a, 12, 0x0a, 8][..], b"live://1", &[0x10, 1]].concat(),
    );
}

// goim.logic ------------------------------------------------------------------

#[test]
fn logic_push_msg() {
    // type=1 (VARINT), operation=2, speed=3, server=4 (LEN), room=5 (LEN),
    // keys=6 (LEN), msg=7 (LEN).
    let to_keys = PushMsg {
        r#type: PushType::Push as i32,
        operation: 1000,
        speed: 0,
        server: "c1".into(),
        room: String::new(),
        keys: vec!["k".into()],
        msg: Bytes::from_static(b"hi"),
        position: None,
        queued_us: 0,
    };
    // PUSH = 0 is not written.
    golden(
        &to_keys,
        &[
            &[0x10, 0xe8, 0x07, 0x22, 2][..],
            b"c1",
            &[0x32, 1, b'k', 0x3a, 2],
            b"hi",
        ]
        .concat(),
    );
    let to_room = PushMsg {
        r#type: PushType::Room as i32,
        operation: 1000,
        room: "live://1".into(),
        msg: Bytes::from_static(b"hi"),
        ..Default::default()
    };
    golden(
        &to_room,
        &[
            &[0x08, 1, 0x10, 0xe8, 0x07, 0x2a, 8][..],
            b"live://1",
            &[0x3a, 2],
            b"hi",
        ]
        .concat(),
    );
    let to_all = PushMsg {
        r#type: PushType::Broadcast as i32,
        operation: 7,
        speed: 100,
        msg: Bytes::from_static(b"m"),
        ..Default::default()
    };
    golden(&to_all, &[0x08, 2, 0x10, 7, 0x18, 100, 0x3a, 1, b'm']);
    // herald's queued_us=17 (VARINT: tag 0x88 0x01), which goim's job skips.
    let queued = PushMsg {
        queued_us: 300,
        ..to_all
    };
    golden(
        &queued,
        &[
            0x08, 2, 0x10, 7, 0x18, 100, 0x3a, 1, b'm', 0x88, 0x01, 0xac, 0x02,
        ],
    );
}

#[test]
fn logic_connect() {
    let req = ConnectReq {
        server: "c1".into(),
        cookie: "a=b".into(),
        token: Bytes::from_static(b"{}"),
        client_addr: "1.2.3.4:5".into(),
        headers: HashMap::from([("origin".to_string(), "x".to_string())]),
    };
    // server=1, cookie=2, token=3 (LEN); herald's client_addr=16 (LEN: 16 << 3 | 2
    // = 130 = varint 82 01) and headers=17 (138 = 8a 01), one entry of 11 bytes.
    golden(
        &req,
        &[
            &[0x0a, 2][..],
            b"c1",
            &[0x12, 3],
            b"a=b",
            &[0x1a, 2],
            b"{}",
            &[0x82, 0x01, 9],
            b"1.2.3.4:5",
            &[0x8a, 0x01, 11, 0x0a, 6],
            b"origin",
            &[0x12, 1, b'x'],
        ]
        .concat(),
    );
    // What goim's comet sends: no herald fields.
    let goim = ConnectReq {
        server: "c1".into(),
        token: Bytes::from_static(b"{}"),
        ..Default::default()
    };
    golden(&goim, &[&[0x0a, 2][..], b"c1", &[0x1a, 2], b"{}"].concat());

    let reply = ConnectReply {
        mid: 42,
        key: "k".into(),
        room_id: "live://1".into(),
        accepts: vec![1000, 1001],
        heartbeat: 30_000_000_000,
        grant: Some(Grant {
            rooms: vec!["live://*".into()],
            any_room: false,
            ops: vec![1000],
            any_op: false,
            expires_at: 1_700_000_000,
            context: Default::default(),
        }),
        answered: false,
    };
    // mid=1 (VARINT 42), key=2, roomID=3 (LEN), accepts=4 (packed LEN: e8 07 e9 07),
    // heartbeat=5 (VARINT 30e9 = 80 d8 8e e1 6f), herald's grant=16 (LEN, key 82 01):
    // { rooms=1 (LEN), ops=3 (packed LEN), expires_at=5 (VARINT 1.7e9 = 80 e2 cf aa 06) }.
    let grant = [
        &[0x0a, 8][..],
        b"live://*",
        &[0x1a, 2, 0xe8, 0x07],
        &[0x28, 0x80, 0xe2, 0xcf, 0xaa, 0x06],
    ]
    .concat();
    assert_eq!(grant.len(), 20);
    golden(
        &reply,
        &[
            &[0x08, 42, 0x12, 1, b'k', 0x1a, 8][..],
            b"live://1",
            &[0x22, 4, 0xe8, 0x07, 0xe9, 0x07],
            &[0x28, 0x80, 0xd8, 0x8e, 0xe1, 0x6f],
            &[0x82, 0x01, 20],
            &grant,
        ]
        .concat(),
    );
    // accepts unpacked (one VARINT per element, as older encoders write it) decodes
    // the same.
    let unpacked =
        ConnectReply::decode(&[0x20, 0xe8, 0x07, 0x20, 0xe9, 0x07][..]).expect("decodes");
    assert_eq!(unpacked.accepts, [1000, 1001]);
    // any_room=2 and any_op=4 (VARINT).
    golden(&Grant::unrestricted(), &[0x10, 1, 0x20, 1]);
}

#[test]
fn logic_disconnect_and_heartbeat() {
    // mid=1 (VARINT), key=2 (LEN), server=3 (LEN).
    let wire = [&[0x08, 42, 0x12, 1, b'k', 0x1a, 2][..], b"c1"].concat();
    golden(
        &DisconnectReq {
            mid: 42,
            key: "k".into(),
            server: "c1".into(),
        },
        &wire,
    );
    golden(
        &HeartbeatReq {
            mid: 42,
            key: "k".into(),
            server: "c1".into(),
        },
        &wire,
    );
    // has=1 (VARINT).
    golden(&DisconnectReply { has: true }, &[0x08, 1]);
    golden(&DisconnectReply { has: false }, &[]);
    golden(&HeartbeatReply {}, &[]);
}

#[test]
fn logic_renew_online() {
    let req = OnlineReq {
        server: "c1".into(),
        room_count: HashMap::from([("live://1".to_string(), 3)]),
    };
    // server=1 (LEN), roomCount=2 (LEN): one entry { key=1 (LEN), value=2 (VARINT) }.
    golden(
        &req,
        &[
            &[0x0a, 2][..],
            b"c1",
            &[0x12, 12, 0x0a, 8],
            b"live://1",
            &[0x10, 3],
        ]
        .concat(),
    );
    let reply = OnlineReply {
        all_room_count: HashMap::from([("live://1".to_string(), 5)]),
    };
    // allRoomCount=1 (LEN).
    golden(
        &reply,
        &[&[0x0a, 12, 0x0a, 8][..], b"live://1", &[0x10, 5]].concat(),
    );
}

#[test]
fn logic_receive() {
    let req = ReceiveReq {
        mid: 42,
        proto: Some(Proto {
            ver: 1,
            op: 4,
            seq: 2,
            body: Bytes::from_static(b"up"),
        }),
        ..Default::default()
    };
    // mid=1 (VARINT), proto=2 (LEN, 10 bytes).
    golden(
        &req,
        &[
            0x08, 42, 0x12, 10, 0x08, 1, 0x10, 4, 0x18, 2, 0x22, 2, b'u', b'p',
        ],
    );
    golden(&ReceiveReply::default(), &[]);
    // herald's reply frame: proto=16 (LEN, key 82 01) { op=2 (VARINT 5) }.
    let answered = ReceiveReply {
        proto: Some(Proto {
            op: 5,
            ..Default::default()
        }),
        ..Default::default()
    };
    golden(&answered, &[0x82, 0x01, 2, 0x10, 5]);
    // herald's frames read together: more=17 (LEN, key 8a 01), one per frame.
    let req = ReceiveReq {
        mid: 42,
        more: vec![Proto {
            op: 4,
            ..Default::default()
        }],
        ..Default::default()
    };
    golden(&req, &[0x08, 42, 0x8a, 0x01, 2, 0x10, 4]);
    let replies = ReceiveReply {
        proto: None,
        more: vec![Proto {
            op: 5,
            ..Default::default()
        }],
    };
    golden(&replies, &[0x8a, 0x01, 2, 0x10, 5]);
}

#[test]
fn logic_nodes() {
    let req = NodesReq {
        platform: "web".into(),
        client_ip: "1.2.3.4".into(),
    };
    // platform=1 (LEN), clientIP=2 (LEN).
    golden(
        &req,
        &[&[0x0a, 3][..], b"web", &[0x12, 7], b"1.2.3.4"].concat(),
    );
    let reply = NodesReply {
        domain: "im.example".into(),
        tcp_port: 3101,
        ws_port: 3102,
        wss_port: 3103,
        heartbeat: 240,
        nodes: vec!["a:1".into()],
        backoff: Some(Backoff {
            max_delay: 300,
            base_delay: 3,
            factor: 1.5,
            jitter: 0.25,
        }),
        heartbeat_max: 3,
    };
    // domain=1 (LEN), tcp_port=2, ws_port=3, wss_port=4, heartbeat=5 (VARINT
    // 3101 = 9d 18, 240 = f0 01), nodes=6 (LEN), backoff=7 (LEN, 15 bytes):
    // { max_delay=1 (VARINT 300 = ac 02), base_delay=2, factor=3 and jitter=4
    // (I32, little-endian: 1.5 = 0x3fc00000, 0.25 = 0x3e800000) },
    // heartbeat_max=8 (VARINT).
    golden(
        &reply,
        &[
            &[0x0a, 10][..],
            b"im.example",
            &[0x10, 0x9d, 0x18, 0x18, 0x9e, 0x18, 0x20, 0x9f, 0x18],
            &[0x28, 0xf0, 0x01],
            &[0x32, 3],
            b"a:1",
            &[0x3a, 15, 0x08, 0xac, 0x02, 0x10, 3],
            &[0x1d, 0x00, 0x00, 0xc0, 0x3f, 0x25, 0x00, 0x00, 0x80, 0x3e],
            &[0x40, 3],
        ]
        .concat(),
    );
}

#[test]
fn unknown_fields_are_skipped() {
    // A newer peer's field 30 (VARINT, key 30 << 3 = f0 01) before a known one.
    let req = DisconnectReply::decode(&[0xf0, 0x01, 5, 0x08, 1][..]).expect("decodes");
    assert!(req.has);
}
