//! Generates the messages and the gRPC service glue of `goim.protocol`,
//! `goim.comet` and `goim.logic` from `proto/`, with a pure-Rust protobuf compiler
//! (no system `protoc`). The `.proto` files are the only definition of these
//! messages: `src/protocol.rs`, `src/comet.rs` and `src/logic.rs` re-export the
//! generated types and add behaviour to them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/goim/protocol.proto",
        "proto/goim/comet.proto",
        "proto/goim/logic.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The transport `connect` constructor would clash with the `Connect` RPC.
        .build_transport(false)
        // Payloads as `bytes::Bytes`: a frame body, a queue message, an auth token
        // and a history entry are handed on (from a read buffer, to every comet)
        // without copies.
        .bytes(".goim.protocol.Proto.body")
        .bytes(".goim.logic.PushMsg.msg")
        .bytes(".goim.logic.ConnectReq.token")
        .bytes(".goim.logic.HistoryEntry.frame")
        .bytes(".goim.logic.Grant.context")
        .bytes(".goim.logic.ReceiveReq.context")
        .compile_fds(fds)?;
    Ok(())
}
