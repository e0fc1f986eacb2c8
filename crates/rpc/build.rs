//! Generates the gRPC service glue for `goim.comet.Comet` and `goim.logic.Logic`
//! from `proto/`, with a pure-Rust protobuf compiler (no system `protoc`). The
//! messages themselves are the hand-written types in this crate (`extern_path`),
//! so the generated code holds only the client and server plumbing.

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
        .extern_path(".goim.protocol", "crate::protocol")
        .extern_path(".goim.comet", "crate::comet")
        .extern_path(".goim.logic", "crate::logic")
        .compile_fds(fds)?;
    Ok(())
}
