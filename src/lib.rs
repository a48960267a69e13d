//! sophgate: an OpenAI-compatible LLM gateway.
//!
//! Module map (see DESIGN.md): `config` reads and validates YAML; `runtime` builds the
//! generation a request runs against; `server` accepts connections; `routes` maps paths;
//! `pipeline` holds one module per stage; `body` is the response body (relay + access log);
//! `mock` is an OpenAI-compatible mock upstream; `demo` wires the two together.

pub mod admin;
pub mod body;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod error;
pub mod fixtures;
pub mod glob;
pub mod logging;
pub mod loopback;
pub mod mock;
pub mod pipeline;
pub mod routes;
pub mod runtime;
pub mod scripting;
pub mod secret;
pub mod server;
pub mod watch;

pub use config::Config;
pub use error::GatewayError;
pub use runtime::{Generation, Runtime};
