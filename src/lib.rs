//! sophgate: an OpenAI-compatible LLM gateway.
//!
//! Module map (DESIGN.md draws it): `http` is the HTTP layer (wire codec, client-facing
//! HTTP/1.1 and h2c server, pooled upstream client) and knows nothing of the gateway;
//! `gateway` runs a request through its phases (`gateway::handle` states their order);
//! `config` reads and validates YAML; `reload` holds the live generation and swaps it;
//! `credentials` and `scripting` are the stages' engines; `tools` are the developer commands
//! (`demo`, `mock-upstream`, `test`).

pub mod config;
pub mod credentials;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod glob;
pub mod http;
pub mod logging;
pub mod observe;
pub mod reload;
pub mod scripting;
pub mod secret;
pub mod tools;

pub use config::Config;
pub use error::GatewayError;
pub use gateway::generation::Generation;
pub use reload::Runtime;
