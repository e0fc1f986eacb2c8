//! etcd v3 backend: a small gRPC client for the calls the registry needs.

pub mod client;
pub mod wire;

pub use client::{EtcdClient, EtcdError};
