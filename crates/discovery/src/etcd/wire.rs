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
