//! What the gateway tells the outside about itself: the per-request end record
//! ([`finished`]) and the Prometheus metrics fed from it ([`metrics`], served by [`scrape`]).

pub mod finished;
pub mod histogram;
pub mod metrics;
pub mod process;
pub mod scrape;
pub mod stream_tap;
