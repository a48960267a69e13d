//! What the fuzz targets in `fuzz/` (and the differential tests) drive, in one place: the
//! parsers and framers that take bytes from clients and upstreams. Re-exports only (plus the
//! request head with its framing); not an API, so hidden from the docs.

pub use crate::config::Config;
pub use crate::gateway::relay::sse::{last_boundary, SseFramer};
pub use crate::gateway::stages::body::{
    peek_chat, peek_chat_scanning, peek_model, peek_model_scanning, ChatPeek, Renames,
};
pub use crate::gateway::stages::ip_acl::IpAcl;
pub use crate::gateway::stages::json_scan::{scan as json_scan, Scan, MAX_DEPTH};
pub use crate::gateway::stages::rewrite::{apply_renames, rename_fields, TextRename};
pub use crate::http::body_decoder::{BodyDecoder, Decoded};
pub use crate::http::server::{parse_request_head, parse_request_head_framing, HeadError};
pub use crate::http::wire::{parse_response_head, Framing, ProtoError};
