//! The phases before the upstream, one module each, in the order [`super::prepare`] runs
//! them: ip_acl, auth, body (with the one-pass [`json_scan`]), routing, rewrite (defaults,
//! field aliases, the route's rename), scripts, policy (the key's budget, then its limits).

pub mod auth;
pub mod body;
pub mod budget;
pub mod ip_acl;
pub mod json_scan;
pub mod policy;
pub mod rewrite;
pub mod routing;
pub mod scripts;
