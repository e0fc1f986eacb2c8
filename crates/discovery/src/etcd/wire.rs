//! The subset of etcd's v3 gRPC messages the registry uses, with etcd's field
//! numbers (`etcdserverpb` in `api/etcdserverpb/rpc.proto`, `mvccpb` in
//! `api/mvccpb/kv.proto`). Fields the registry never sets or reads are left out;
//! protobuf skips unknown fields, so answers carrying them still decode.

use prost::Message;

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, Message)]
pub struct ResponseHeader {
    /// ID of the cluster that answered.
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// ID of the member that answered.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// Key-value store revision when the request was applied.
    #[prost(int64, tag = "3")]
    pub revision: i64,
    /// Raft term when the request was applied.
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Revision of the key's last creation.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// Revision of the key's last modification.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// Number of modifications since creation.
    #[prost(int64, tag = "4")]
    pub version: i64,
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    /// Lease the key is attached to (0 = none).
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EventType {
    /// The key was written.
    Put = 0,
    /// The key was deleted (or its lease expired).
    Delete = 1,
}

/// `mvccpb.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// [`EventType`].
    #[prost(enumeration = "EventType", tag = "1")]
    pub r#type: i32,
    /// The key after a put; the deleted key (no value) after a delete.
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    /// The key before the event, when asked for.
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.RangeRequest` (`/etcdserverpb.KV/Range`).
#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    /// First key of the range.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range, exclusive (empty = `key` only).
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Most keys returned (0 = no limit).
    #[prost(int64, tag = "3")]
    pub limit: i64,
    /// Revision to read at (0 = newest).
    #[prost(int64, tag = "4")]
    pub revision: i64,
    /// Return only the count of keys.
    #[prost(bool, tag = "9")]
    pub count_only: bool,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct RangeResponse {
    /// Header; its revision is the one the range was read at.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The keys found.
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than were returned.
    #[prost(bool, tag = "3")]
    pub more: bool,
    /// Number of keys in the range.
    #[prost(int64, tag = "4")]
    pub count: i64,
}

/// `etcdserverpb.PutRequest` (`/etcdserverpb.KV/Put`).
#[derive(Clone, PartialEq, Message)]
pub struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// Lease to attach the key to (0 = none).
    #[prost(int64, tag = "3")]
    pub lease: i64,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct PutResponse {
    /// Header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.DeleteRangeRequest` (`/etcdserverpb.KV/DeleteRange`).
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeRequest {
    /// First key to delete.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range, exclusive (empty = `key` only).
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

/// `etcdserverpb.DeleteRangeResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeResponse {
    /// Header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Number of keys deleted.
    #[prost(int64, tag = "2")]
    pub deleted: i64,
}

/// `etcdserverpb.LeaseGrantRequest` (`/etcdserverpb.Lease/LeaseGrant`).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseGrantRequest {
    /// Requested time to live, seconds.
    #[prost(int64, tag = "1")]
    pub ttl: i64,
    /// Requested lease ID (0 = chosen by etcd).
    #[prost(int64, tag = "2")]
    pub id: i64,
}

/// `etcdserverpb.LeaseGrantResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseGrantResponse {
    /// Header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The lease ID.
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// Time to live chosen by etcd, seconds.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
    /// Error text, if the grant failed.
    #[prost(string, tag = "4")]
    pub error: String,
}

/// `etcdserverpb.LeaseRevokeRequest` (`/etcdserverpb.Lease/LeaseRevoke`).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRevokeRequest {
    /// The lease ID; its keys are deleted.
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// `etcdserverpb.LeaseRevokeResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRevokeResponse {
    /// Header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.LeaseKeepAliveRequest` (`/etcdserverpb.Lease/LeaseKeepAlive`).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseKeepAliveRequest {
    /// The lease ID to refresh.
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// `etcdserverpb.LeaseKeepAliveResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseKeepAliveResponse {
    /// Header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The lease ID.
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// New time to live, seconds; 0 or less when the lease no longer exists.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
}

/// `etcdserverpb.WatchRequest` (`/etcdserverpb.Watch/Watch`).
#[derive(Clone, PartialEq, Message)]
pub struct WatchRequest {
    /// Create or cancel a watcher.
    #[prost(oneof = "watch_request::RequestUnion", tags = "1, 2")]
    pub request_union: Option<watch_request::RequestUnion>,
}

/// The oneof of [`WatchRequest`].
pub mod watch_request {
    /// `WatchRequest.request_union`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum RequestUnion {
        /// Starts a watcher.
        #[prost(message, tag = "1")]
        CreateRequest(super::WatchCreateRequest),
        /// Stops a watcher.
        #[prost(message, tag = "2")]
        CancelRequest(super::WatchCancelRequest),
    }
}

/// `etcdserverpb.WatchCreateRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WatchCreateRequest {
    /// First key watched.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the watched range, exclusive (empty = `key` only).
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// First revision to report, inclusive (0 = from now).
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    /// Ask for periodic empty responses carrying the current revision.
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
    /// Also send each key's previous value.
    #[prost(bool, tag = "6")]
    pub prev_kv: bool,
    /// Watcher ID to use (0 = chosen by etcd).
    #[prost(int64, tag = "7")]
    pub watch_id: i64,
}

/// `etcdserverpb.WatchCancelRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WatchCancelRequest {
    /// The watcher to stop.
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
}

/// `etcdserverpb.WatchResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct WatchResponse {
    /// Header; its revision is the store's revision when the response was sent.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The watcher this response belongs to.
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    /// Answer to a create request.
    #[prost(bool, tag = "3")]
    pub created: bool,
    /// The watcher was stopped (cancel request, compaction or error).
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    /// Oldest revision still available, when the start revision was compacted.
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    /// Why the watcher was stopped.
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    /// Part of a response split in several.
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    /// The changes, in revision order.
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

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
}

/// `etcdserverpb.AuthenticateRequest`: a user's name and password, traded for a
/// token that every later call carries (metadata `token`).
#[derive(Clone, PartialEq, Message)]
pub struct AuthenticateRequest {
    /// User name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Password.
    #[prost(string, tag = "2")]
    pub password: String,
}

/// `etcdserverpb.AuthenticateResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct AuthenticateResponse {
    /// Header of the answer.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The token to send as metadata `token`.
    #[prost(string, tag = "2")]
    pub token: String,
}

/// `etcdserverpb.Compare`: one condition of a transaction, on one key.
#[derive(Clone, PartialEq, Message)]
pub struct Compare {
    /// [`CompareResult`].
    #[prost(enumeration = "CompareResult", tag = "1")]
    pub result: i32,
    /// [`CompareTarget`].
    #[prost(enumeration = "CompareTarget", tag = "2")]
    pub target: i32,
    /// The key compared.
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// What it is compared with.
    #[prost(oneof = "compare::TargetUnion", tags = "4, 5, 6, 7, 8")]
    pub target_union: Option<compare::TargetUnion>,
}

/// `etcdserverpb.Compare.CompareResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompareResult {
    /// Equal.
    Equal = 0,
    /// Greater.
    Greater = 1,
    /// Less.
    Less = 2,
    /// Not equal.
    NotEqual = 3,
}

/// `etcdserverpb.Compare.CompareTarget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompareTarget {
    /// The key's version.
    Version = 0,
    /// The key's creation revision (0 = the key does not exist).
    Create = 1,
    /// The key's last modification revision.
    Mod = 2,
    /// The key's value.
    Value = 3,
    /// The key's lease.
    Lease = 4,
}

/// The oneof of [`Compare`].
pub mod compare {
    /// `etcdserverpb.Compare.target_union`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum TargetUnion {
        /// For [`super::CompareTarget::Version`].
        #[prost(int64, tag = "4")]
        Version(i64),
        /// For [`super::CompareTarget::Create`].
        #[prost(int64, tag = "5")]
        CreateRevision(i64),
        /// For [`super::CompareTarget::Mod`].
        #[prost(int64, tag = "6")]
        ModRevision(i64),
        /// For [`super::CompareTarget::Value`].
        #[prost(bytes, tag = "7")]
        Value(Vec<u8>),
        /// For [`super::CompareTarget::Lease`].
        #[prost(int64, tag = "8")]
        Lease(i64),
    }
}

/// `etcdserverpb.RequestOp`: one operation of a transaction branch.
#[derive(Clone, PartialEq, Message)]
pub struct RequestOp {
    /// The operation.
    #[prost(oneof = "request_op::Request", tags = "1, 2, 3")]
    pub request: Option<request_op::Request>,
}

/// The oneof of [`RequestOp`].
pub mod request_op {
    /// `etcdserverpb.RequestOp.request` (nested transactions left out).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        /// A read.
        #[prost(message, tag = "1")]
        RequestRange(super::RangeRequest),
        /// A write.
        #[prost(message, tag = "2")]
        RequestPut(super::PutRequest),
        /// A delete.
        #[prost(message, tag = "3")]
        RequestDeleteRange(super::DeleteRangeRequest),
    }
}

/// `etcdserverpb.ResponseOp`: the answer to one [`RequestOp`].
#[derive(Clone, PartialEq, Message)]
pub struct ResponseOp {
    /// The answer.
    #[prost(oneof = "response_op::Response", tags = "1, 2, 3")]
    pub response: Option<response_op::Response>,
}

/// The oneof of [`ResponseOp`].
pub mod response_op {
    /// `etcdserverpb.ResponseOp.response` (nested transactions left out).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        /// A read's answer.
        #[prost(message, tag = "1")]
        ResponseRange(super::RangeResponse),
        /// A write's answer.
        #[prost(message, tag = "2")]
        ResponsePut(super::PutResponse),
        /// A delete's answer.
        #[prost(message, tag = "3")]
        ResponseDeleteRange(super::DeleteRangeResponse),
    }
}

/// `etcdserverpb.TxnRequest` (`/etcdserverpb.KV/Txn`): if every compare holds,
/// `success` runs, else `failure`, atomically.
#[derive(Clone, PartialEq, Message)]
pub struct TxnRequest {
    /// The conditions.
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    /// Run when every condition holds.
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

/// `etcdserverpb.TxnResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct TxnResponse {
    /// Header of the answer.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Whether the conditions held (`success` ran).
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    /// The answers of the branch that ran, in order.
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}
