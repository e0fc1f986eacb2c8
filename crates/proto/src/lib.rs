//! The goim wire protocol, sans I/O.
//!
//! Everything a client and a server exchange is a [`Frame`]: a 16-byte big-endian
//! header (`packLen`, `headerLen`, `ver`, `op`, `seq`) followed by an opaque body. This
//! crate encodes and decodes frames ([`FrameCodec`] for tokio streams, [`decode_frame`]
//! for byte slices), builds and walks OpRaw batches ([`raw`]), parses the auth token
//! ([`AuthToken`]) and the sub/unsub op lists ([`parse_op_list`]), the
//! recovery extension (positioned pushes, stream states: [`recovery`]), and implements the
//! server side of RFC 6455 framing ([`ws`]) so that comet and test clients share one
//! implementation. It depends on nothing else of herald and never does I/O; every
//! tier depends on it.
//!
//! Decoding never panics, whatever the input: malformed input is an error value.

mod auth;
mod codec;
mod frame;
mod op;
pub mod raw;
pub mod recovery;
pub mod ws;

pub use auth::{AuthError, AuthToken};
pub use codec::{decode_exact, decode_frame, CodecError, FrameCodec};
pub use frame::{Frame, Header, HEADER_LEN, MAX_BODY, MAX_PACK, PROTO_VERSION};
pub use op::{parse_op_list, Op};
