//! What the gateway tells the outside about itself: the per-request end record
//! ([`finished`]) and what is fed from it — the Prometheus metrics ([`metrics`], served by
//! [`scrape`]) and the status page's live statistics ([`live`], [`status_page`]) — and the
//! request's traces ([`trace`], exported by [`trace_export`]).

pub mod finished;
pub mod histogram;
pub mod live;
pub mod metrics;
pub mod process;
pub mod scrape;
pub mod status_page;
pub mod store_calls;
pub mod stream_tap;
pub mod trace;
pub mod trace_export;
