//! The upstream phase: one upstream call ([`forward`]), the attempt loop across a plan's
//! upstreams ([`fallback`]), which credential an attempt uses ([`credential`]), and the
//! merged `/v1/models` list ([`models`]).

pub mod credential;
pub mod errors;
pub mod fallback;
pub mod forward;
pub mod models;
pub mod models_cache;
pub mod prepared;
