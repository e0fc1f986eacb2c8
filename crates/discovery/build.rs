//! Generates etcd's v3 messages (`etcdserverpb`, `mvccpb`, `authpb`) from the
//! vendored `.proto` files in `proto/etcd/` (see `proto/README.md`), with a
//! pure-Rust protobuf compiler (no system `protoc`). Only with the `etcd` feature;
//! messages only (the client calls the methods by path with a prost codec).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("CARGO_FEATURE_ETCD").is_none() {
        return Ok(());
    }
    let fds = protox::compile(["etcd/etcdserver/etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
