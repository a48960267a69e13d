//! What operators see of the running gateway: live statistics and the status page, traces.

pub mod live;
pub mod status_page;
pub mod trace;
pub mod trace_export;
