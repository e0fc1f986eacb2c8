//! End-to-end tests: a real server on ephemeral loopback ports, driven by clients
//! that speak the wire protocol over real sockets.

#![allow(clippy::unwrap_used)]

mod api_security;
mod auth;
mod bad_input;
mod binary;
mod chat;
mod grants;
mod http_api;
mod http_limits;
mod https;
mod limits;
mod protocol;
mod recovering;
mod recovery;
mod regressions;
mod standalone_engines;
mod support;
mod tls;
