//! The pooled HTTP/1.1 client for unproxied upstreams: each request writes, reads and relays
//! its connection itself (no task or channel per request), over plain TCP or rustls.

pub mod pool;
pub mod transport;
