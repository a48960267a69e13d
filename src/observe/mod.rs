//! Observability: what the gateway tells operators about the requests it serves.

pub mod trace;
pub mod trace_export;
