//! Usage metering and budgets: what each key (by label, never the key) used per model since
//! the process started, and per budget period.
//!
//! - [`period`]: calendar periods in UTC (day, week from Monday, month) and their bounds.
//! - [`pricing`]: `pricing:` model globs → price per 1M input / output tokens.
//! - [`budget`]: a key's `budget:` (a token or cost limit per period).
//! - [`backend`]: the storage seam ([`UsageBackend`]) and the process's current backend.
//! - [`ledger`]: the in-process backend (atomics per key and model; per process, reset on
//!   restart, kept across reloads).
//! - [`shared`]: the backend over the shared store (`store:`): fleet-wide counters and
//!   budgets in Redis, written off the request path, the ledger as local record and fallback.
//! - [`meter`]: one request's meter, fed by the phases and the relay, recorded when it ends.
//! - [`report`]: the JSON of `GET /admin/usage`.

pub mod backend;
pub mod budget;
pub mod ledger;
pub mod meter;
pub mod period;
pub mod pricing;
pub mod report;
pub mod shared;

pub use backend::{backend, install, UsageBackend};
pub use meter::RequestMeter;
