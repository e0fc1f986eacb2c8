//! The herald binary's library: configuration, wiring of the tiers into roles, the
//! HTTP listener every HTTP port uses, the embedded browser assets and the metrics
//! endpoint.
//!
//! [`standalone::Standalone`] runs comet, logic and job in one process on the
//! embedded seams (in-process queue, in-memory store, local registry, direct calls).

pub mod api;
pub mod auth;
pub mod chat;
pub mod cluster_rpc;
pub mod config;
pub mod dashboard;
pub mod edge;
pub mod engines;
pub mod health;
pub mod http_server;
pub mod memory;
pub mod observe;
pub mod periodic;
pub mod roles;
pub mod standalone;
pub mod web;

pub use config::Config;
pub use standalone::Standalone;
