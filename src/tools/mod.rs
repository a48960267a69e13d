//! Developer commands built into the binary: the OpenAI-compatible mock upstream
//! (`sophgate mock-upstream`), the self-contained demo (`sophgate demo`) and the plugin
//! fixture runner (`sophgate test`), with the loopback accept loop they share.

pub mod demo;
pub mod fixtures;
pub mod loopback;
pub mod mock;
