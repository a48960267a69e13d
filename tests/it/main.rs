//! sophgate's integration tests: one test binary (one link of the dependency tree), one module
//! per feature. Shared helpers are in `common` (those that need sophgate's types) and in the
//! `testkit` crate (token mock, raw-socket upstream, ports, polling).
//!
//! Run one feature with `cargo test --test it <module>::`, e.g. `cargo test --test it tls::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod access_outcome;
mod auth;
mod body_vs_hyper;
mod budget;
mod cancel;
mod config_files;
mod conn_pool;
mod credentials;
mod defaults;
mod errors;
mod fixtures_cli;
mod fleet;
mod fleet_usage;
mod footprint;
mod forward_headers;
mod http1_server;
mod ip_acl;
mod key_policy;
mod lazy_scripts;
mod logs;
mod metrics;
mod mock_endpoints;
mod models;
mod otel;
mod plugins;
mod reload;
mod routing;
mod script_fast_paths;
mod server;
mod shutdown;
mod slow_clients;
mod smuggling;
mod status_page;
mod store_cost;
mod store_faults;
mod store_transports;
mod streaming;
mod tls;
mod token_mock;
mod usage;
mod workers;
