//! What operators see of the running gateway.

pub mod live;
pub mod status_page;
