//! etcd's v3 messages, generated at build time from etcd's own `.proto` files
//! (vendored in `proto/etcd/`, see `proto/README.md`): one module per protobuf
//! package, `etcdserverpb` (`rpc.proto`), `mvccpb` (`kv.proto`) and `authpb`
//! (`auth.proto`). The messages the registry uses are re-exported here under their
//! etcd names.

/// `mvccpb`: `KeyValue` and `Event`.
#[allow(missing_docs, clippy::all)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// `authpb`: users, roles and permissions (`etcdserverpb` refers to them).
#[allow(missing_docs, clippy::all)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

/// `etcdserverpb`: the requests and responses of etcd's services.
#[allow(missing_docs, clippy::all)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub use etcdserverpb::compare::{CompareResult, CompareTarget};
pub use etcdserverpb::{
    compare, request_op, response_op, watch_request, AuthenticateRequest, AuthenticateResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
pub use mvccpb::event::EventType;
pub use mvccpb::{Event, KeyValue};

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use prost::Message;

    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/herald/a/"), b"/herald/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    /// Encodings checked against etcd's field numbers.
    #[test]
    fn tags() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 1,
            ..Default::default()
        };
        // key=1 (LEN), value=2 (LEN), lease=3 (VARINT).
        assert_eq!(put.encode_to_vec(), [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 1]);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                    start_revision: 5,
                    ..Default::default()
                },
            )),
        };
        assert_eq!(
            create.encode_to_vec(),
            [0x0a, 8, 0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 5]
        );
        // events=11 (LEN): (11 << 3) | 2 = 0x5a.
        let resp = WatchResponse {
            events: vec![Event::default()],
            ..Default::default()
        };
        assert_eq!(resp.encode_to_vec(), [0x5a, 0]);
        let grant = LeaseGrantResponse::decode(&[0x10, 7, 0x18, 3, 0x22, 1, b'x'][..]);
        let grant = grant.expect("decodes");
        assert_eq!((grant.id, grant.ttl, grant.error.as_str()), (7, 3, "x"));
        // compare=1 (LEN) { target=2 CREATE(1), key=3, create_revision=5 };
        // success=2 (LEN) { request_put=2 (LEN) { key=1 } }.
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: b"k".to_vec(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        assert_eq!(
            txn.encode_to_vec(),
            [0x0a, 7, 0x10, 1, 0x1a, 1, b'k', 0x28, 0, 0x12, 5, 0x12, 3, 0x0a, 1, b'k']
        );
    }

    // Golden bytes: every request the registry sends, and the answers it reads,
    // encoded and compared with bytes written out by hand from the protobuf rules
    // (key = field number << 3 | wire type: 0 VARINT, 2 LEN), and decoded back.
    // Field numbers are etcd's (`rpc.proto`, `kv.proto`); proto3 scalars at their
    // default are not written, a oneof member always is.

    /// `msg` encodes to exactly `wire`, and `wire` decodes to `msg`.
    #[track_caller]
    fn golden<M: Message + Default + PartialEq + Debug>(msg: &M, wire: &[u8]) {
        assert_eq!(msg.encode_to_vec(), wire, "encoding of {msg:?}");
        assert_eq!(&M::decode(wire).expect("decodes"), msg, "decoding");
    }

    /// A lease ID as etcd hands them out (63 bits).
    const LEASE: i64 = 0x694d_7b5e_1f2a_3c4d;
    /// [`LEASE`] as a varint: 7 bits at a time, low first, 0x80 on all but the last.
    const LEASE_VARINT: [u8; 9] = [0xcd, 0xf8, 0xa8, 0xf9, 0xe1, 0xeb, 0xde, 0xa6, 0x69];

    /// `ResponseHeader { revision: 9 }` as a header field: header=1 (LEN) { revision=3 }.
    const HEADER_REV_9: [u8; 4] = [0x0a, 2, 0x18, 9];

    fn header_rev_9() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: 9,
            ..Default::default()
        })
    }

    /// `KeyValue { key: "k", create_revision: 5, mod_revision: 9, version: 2,
    /// value: "v", lease: 7 }`: key=1 (LEN), create_revision=2, mod_revision=3,
    /// version=4 (VARINT), value=5 (LEN), lease=6 (VARINT); 14 bytes.
    fn kv() -> KeyValue {
        KeyValue {
            key: b"k".to_vec(),
            create_revision: 5,
            mod_revision: 9,
            version: 2,
            value: b"v".to_vec(),
            lease: 7,
        }
    }
    const KV: [u8; 14] = [
        0x0a, 1, b'k', 0x10, 5, 0x18, 9, 0x20, 2, 0x2a, 1, b'v', 0x30, 7,
    ];

    #[test]
    fn golden_range() {
        // The registry's listing: key=1, range_end=2 (LEN).
        let list = RangeRequest {
            key: b"/herald/a/".to_vec(),
            range_end: prefix_end(b"/herald/a/"),
            ..Default::default()
        };
        let wire = [&[0x0a, 10][..], b"/herald/a/", &[0x12, 10], b"/herald/a0"].concat();
        golden(&list, &wire);
        // Its liveness check adds count_only=9 (VARINT): 9 << 3 = 0x48.
        let count = RangeRequest {
            count_only: true,
            ..list
        };
        golden(&count, &[&wire[..], &[0x48, 1]].concat());
        // One key.
        let get = RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        golden(&get, &[0x0a, 1, b'k']);
    }

    #[test]
    fn golden_range_response() {
        // A member's header: cluster_id=1, member_id=2 (uint64 VARINT, 10 bytes
        // each), revision=3, raft_term=4; kvs=2 (LEN), more=3, count=4 (VARINT).
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 0xcdf8_1819_4e3a_8c32,
                member_id: 0x8e9e_05c5_2164_694d,
                revision: 9,
                raft_term: 2,
            }),
            kvs: vec![kv()],
            more: true,
            count: 2,
        };
        let header = [
            &[0x0a, 26, 0x08][..],
            &[0xb2, 0x98, 0xea, 0xf1, 0x94, 0x83, 0x86, 0xfc, 0xcd, 0x01],
            &[0x10],
            &[0xcd, 0xd2, 0x91, 0x8b, 0xd2, 0xb8, 0x81, 0xcf, 0x8e, 0x01],
            &[0x18, 9, 0x20, 2],
        ]
        .concat();
        golden(
            &resp,
            &[&header[..], &[0x12, 14], &KV, &[0x18, 1, 0x20, 2]].concat(),
        );
    }

    #[test]
    fn golden_put() {
        // key=1, value=2 (LEN), lease=3 (VARINT).
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: LEASE,
            ..Default::default()
        };
        golden(
            &put,
            &[&[0x0a, 1, b'k', 0x12, 1, b'v', 0x18][..], &LEASE_VARINT].concat(),
        );
        golden(
            &PutResponse {
                header: header_rev_9(),
                ..Default::default()
            },
            &HEADER_REV_9,
        );
    }

    #[test]
    fn golden_delete_range() {
        // key=1 (LEN).
        let delete = DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        golden(&delete, &[0x0a, 1, b'k']);
        // header=1, deleted=2 (VARINT).
        let resp = DeleteRangeResponse {
            header: header_rev_9(),
            deleted: 1,
            ..Default::default()
        };
        golden(&resp, &[&HEADER_REV_9[..], &[0x10, 1]].concat());
    }

    #[test]
    fn golden_txn_create_if_absent() {
        // compare=1 (LEN) { target=2 CREATE (1), key=3 (LEN), create_revision=5
        // (VARINT 0, written: a oneof member) }; result EQUAL (0) is not written;
        // success=2 (LEN) { request_put=2 (LEN) { key=1, value=2, lease=3 } };
        // failure=3 (LEN) { request_range=1 (LEN) { key=1 } }.
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: b"k".to_vec(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 7,
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            }],
        };
        golden(
            &txn,
            &[
                0x0a, 7, 0x10, 1, 0x1a, 1, b'k', 0x28, 0, //
                0x12, 10, 0x12, 8, 0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 7, //
                0x1a, 5, 0x0a, 3, 0x0a, 1, b'k',
            ],
        );
    }

    #[test]
    fn golden_txn_delete_if_lease() {
        // compare=1 { target=2 LEASE (4), key=3, lease=8 (VARINT, 8 << 3 = 0x40) };
        // success=2 { request_delete_range=3 (LEN) { key=1 } }.
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Lease as i32,
                key: b"k".to_vec(),
                target_union: Some(compare::TargetUnion::Lease(7)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"k".to_vec(),
                        ..Default::default()
                    },
                )),
            }],
            failure: Vec::new(),
        };
        golden(
            &txn,
            &[
                0x0a, 7, 0x10, 4, 0x1a, 1, b'k', 0x40, 7, //
                0x12, 5, 0x1a, 3, 0x0a, 1, b'k',
            ],
        );
    }

    #[test]
    fn golden_txn_response() {
        // header=1, succeeded=2 (false: not written), responses=3 (LEN) {
        // response_range=1 (LEN) { kvs=2 (LEN), count=4 } }.
        let resp = TxnResponse {
            header: header_rev_9(),
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse {
                    kvs: vec![kv()],
                    count: 1,
                    ..Default::default()
                })),
            }],
        };
        golden(
            &resp,
            &[
                &HEADER_REV_9[..],
                &[0x1a, 20, 0x0a, 18, 0x12, 14],
                &KV,
                &[0x20, 1],
            ]
            .concat(),
        );
        // A transaction whose conditions held: succeeded=2 (VARINT), and the put's
        // answer: response_put=2 (LEN) { header=1 }.
        let resp = TxnResponse {
            header: header_rev_9(),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponsePut(PutResponse {
                    header: header_rev_9(),
                    ..Default::default()
                })),
            }],
        };
        golden(
            &resp,
            &[
                &HEADER_REV_9[..],
                &[0x10, 1, 0x1a, 6, 0x12, 4],
                &HEADER_REV_9,
            ]
            .concat(),
        );
    }

    #[test]
    fn golden_lease_grant() {
        // TTL=1 (VARINT); ID=2 is 0 (etcd chooses), not written.
        golden(&LeaseGrantRequest { ttl: 10, id: 0 }, &[0x08, 10]);
        // header=1, ID=2, TTL=3 (VARINT), error=4 (LEN, empty: not written).
        let resp = LeaseGrantResponse {
            header: header_rev_9(),
            id: LEASE,
            ttl: 10,
            error: String::new(),
        };
        golden(
            &resp,
            &[&HEADER_REV_9[..], &[0x10], &LEASE_VARINT, &[0x18, 10]].concat(),
        );
    }

    #[test]
    fn golden_lease_revoke() {
        // ID=1 (VARINT).
        golden(
            &LeaseRevokeRequest { id: LEASE },
            &[&[0x08][..], &LEASE_VARINT].concat(),
        );
        golden(
            &LeaseRevokeResponse {
                header: header_rev_9(),
            },
            &HEADER_REV_9,
        );
    }

    #[test]
    fn golden_lease_keep_alive() {
        // ID=1 (VARINT).
        golden(
            &LeaseKeepAliveRequest { id: LEASE },
            &[&[0x08][..], &LEASE_VARINT].concat(),
        );
        // header=1, ID=2, TTL=3 (VARINT).
        let alive = LeaseKeepAliveResponse {
            header: header_rev_9(),
            id: LEASE,
            ttl: 10,
        };
        golden(
            &alive,
            &[&HEADER_REV_9[..], &[0x10], &LEASE_VARINT, &[0x18, 10]].concat(),
        );
        // An expired lease: TTL 0, not written.
        let gone = LeaseKeepAliveResponse { ttl: 0, ..alive };
        golden(&gone, &[&HEADER_REV_9[..], &[0x10], &LEASE_VARINT].concat());
    }

    #[test]
    fn golden_watch_create() {
        // create_request=1 (LEN) { key=1, range_end=2 (LEN), start_revision=3,
        // progress_notify=4 (VARINT) }: the registry's watch of a prefix.
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"/a/".to_vec(),
                    range_end: prefix_end(b"/a/"),
                    start_revision: 10,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        golden(
            &create,
            &[
                &[0x0a, 14, 0x0a, 3][..],
                b"/a/",
                &[0x12, 3],
                b"/a0",
                &[0x18, 10, 0x20, 1],
            ]
            .concat(),
        );
    }

    #[test]
    fn golden_watch_response() {
        // The answer to the create: header=1, created=3 (VARINT); watch_id=2 is 0.
        let created = WatchResponse {
            header: header_rev_9(),
            created: true,
            ..Default::default()
        };
        golden(&created, &[&HEADER_REV_9[..], &[0x18, 1]].concat());
        // A delete: events=11 (LEN, 11 << 3 | 2 = 0x5a) { type=1 DELETE (1),
        // kv=2 (LEN) { key=1, mod_revision=3 } }.
        let deleted = WatchResponse {
            header: Some(ResponseHeader {
                revision: 10,
                ..Default::default()
            }),
            events: vec![Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    mod_revision: 10,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        golden(
            &deleted,
            &[
                0x0a, 2, 0x18, 10, //
                0x5a, 9, 0x08, 1, 0x12, 5, 0x0a, 1, b'k', 0x18, 10,
            ],
        );
        // A put (type PUT = 0, not written) and a compaction: compact_revision=5,
        // canceled=4, cancel_reason=6 (LEN).
        let put = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv()),
            prev_kv: None,
        };
        golden(&put, &[&[0x12, 14][..], &KV].concat());
        let compacted = WatchResponse {
            watch_id: 1,
            canceled: true,
            compact_revision: 5,
            cancel_reason: "c".into(),
            ..Default::default()
        };
        golden(&compacted, &[0x10, 1, 0x20, 1, 0x28, 5, 0x32, 1, b'c']);
    }

    #[test]
    fn golden_authenticate() {
        // name=1, password=2 (LEN).
        let req = AuthenticateRequest {
            name: "herald".into(),
            password: "s3cret".into(),
        };
        golden(
            &req,
            &[&[0x0a, 6][..], b"herald", &[0x12, 6], b"s3cret"].concat(),
        );
        // header=1, token=2 (LEN).
        let resp = AuthenticateResponse {
            header: header_rev_9(),
            token: "t.1".into(),
        };
        golden(&resp, &[&HEADER_REV_9[..], &[0x12, 3], b"t.1"].concat());
    }
}
