//! The HTTP layer: everything that speaks HTTP on a socket, and nothing of the gateway.
//!
//! - [`wire`]: the HTTP/1.1 wire format as pure functions over byte buffers (request heads
//!   out, response heads and the framing they choose in);
//! - [`body_decoder`]: the body decoder both sides use (length, chunked, until close);
//! - [`headers`]: the one hop-by-hop predicate, the per-thread header-name cache and the pool
//!   of recycled header maps;
//! - [`server`]: the client-facing HTTP/1.1 connection loop, generic over its IO, calling a
//!   [`server::Handler`]; [`h2c`]: HTTP/2 with prior knowledge on hyper, through the same
//!   handler; [`listener`]: the accept loop that tells the two apart;
//! - [`rewind`]: an IO that yields the bytes the accept loop read before it; [`send_timeout`]:
//!   writes towards the client that fail once blocked for `limits.send_timeout`;
//! - [`client`]: the pooled upstream HTTP/1.1 client and its TCP/TLS transport.
//!
//! No module here imports from the gateway (or any other part of the crate);
//! `scripts/check-layout` checks it in CI.

pub mod body_decoder;
pub mod client;
pub mod h2c;
pub mod headers;
pub mod listener;
pub mod rewind;
pub mod send_timeout;
pub mod server;
pub mod wire;

/// The error type of bodies crossing the layer's boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
