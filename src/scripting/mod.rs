//! Rhai plugins: scripted request, response and stream transforms.
//!
//! A plugin is a `.rhai` file with parameters from config. It may define any of three hooks,
//! each taking one map; what a hook leaves in the map is what goes on:
//!
//! - `fn on_request(req)` — `req.body` (the JSON body), `req.headers` (lower-case name →
//!   string, or array of strings for a repeated header; `()` removes one), `req.path` (the
//!   upstream path), all writable; `req.method`, `req.client_ip`, `req.key` (the principal's
//!   label, never a secret) are informative; `req.ctx`, a map shared by all hooks of the request.
//! - `fn on_response(res)` — non-streamed answers: `res.status`, `res.headers`, `res.body`,
//!   `res.ctx`.
//! - `fn on_event(ev)` — each SSE event: `ev.data` (parsed JSON, or the raw string such as
//!   `"[DONE]"`; a string left here is sent as is), `ev.ctx`, and `ev.drop` (set it to `true`
//!   to drop the event).
//!
//! **`params`** is the plugin's parameters from config. It is a read-only constant in the scope
//! of every hook call, so hook functions read it directly. Rhai functions cannot see the
//! caller's variables, so *helper* functions called from a hook do not see `params`: pass it
//! (or the part needed) as an argument.
//!
//! **Top-level code** (outside functions) runs once, when the plugin loads, with `params` in
//! scope. Use it to validate params (`throw "..."` fails the load, reported with the line) and
//! to precompute tables; the variables it leaves become read-only constants of every hook call,
//! like `params` (they are copied per call: keep them small). It may call
//! `disable_hook("on_response")` etc. to switch off a hook the given params make a no-op, so
//! requests do not pay for converting values nobody changes. Top-level code does not run again
//! per request.
//!
//! **Errors.** `throw #{ status: 403, message: "..." }` (status 400..=599) becomes
//! [`ScriptFailure::Thrown`]: the pipeline answers with that status and message. Anything else —
//! a runtime error, a limit hit, a thrown string, a hook leaving a malformed value — becomes
//! [`ScriptFailure::Error`]: details (plugin, hook, line, column) go to the log only.
//!
//! **Helpers**: `log_debug/log_info/log_warn/log_error(msg)` and `print`/`debug` (tracing target
//! `sophgate::script`, tagged with the plugin), `json_encode(value)`, `json_decode(text)`,
//! `base64_encode(text)`, `base64_decode(text)`, `sha256(text)` (hex), `now_unix()` (seconds),
//! `now_ms()`, `value.rename_keys(#{from: to})` (recursive, in place; native for speed),
//! `disable_hook(name)` (top-level code only), plus Rhai's standard library. Nothing reads
//! files, the network or the environment; `import` and `eval` are unavailable.
//!
//! **Changing values in place**: Rhai copies values passed to functions and read into
//! variables. `req.body.x = 1` and method calls such as `req.body.rename_keys(...)` change the
//! request; `let b = req.body; b.x = 1;` changes only the copy (assign it back).
//!
//! **Sandbox**: see [`ScriptLimits`]. The wall-clock budget applies to each plugin's hook call
//! separately. A script stuck in `loop {}` is stopped by it and fails only its own request;
//! hook calls run on the caller's thread (synchronously, up to that budget) and move to a
//! larger stack segment when the thread's remaining stack could not hold the call depth limit.
//!
//! **Cost**: the caller checks `has_on_*` first, so a request no hook sees pays nothing. The
//! body converts to script values once per request however many plugins run; ASTs compile once
//! per generation; hook calls share no lock.

pub mod api;
pub mod bundled;
pub mod engine;
mod event_data;
mod event_stream;
mod failure;
mod hook_call;
mod outcome;
mod partial;
mod partial_parse;
pub mod plugin;
mod plugin_reach;
mod reach;

pub use api::{EventData, EventOutcome, ScriptEvent, ScriptRequest, ScriptResponse};
pub use bundled::bundled;
pub use event_stream::EventStream;
pub use plugin::{
    Aliases, Edited, EventVerdict, PluginSpec, Plugins, Renames, ScriptCompileError, ScriptFailure,
    ScriptLimits,
};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lazy_tests;

#[cfg(test)]
mod fast_path_tests;

#[cfg(test)]
mod stream_tests;
