//! `ip_whitelist`, `ip_blacklist` and `trusted_proxies`: lists of addresses and networks.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Collector;
use crate::config::yaml_path::{k, Segment};

/// Parses `1.2.3.4`, `10.0.0.0/8`, `::1` or `2001:db8::/32`; host bits are masked off.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The list under the top-level key `name`; each bad item is an error at its index.
pub(super) fn nets(c: &mut Collector, name: &str, list: Option<Vec<String>>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, item) in list.unwrap_or_default().into_iter().enumerate() {
        match parse_net(&item) {
            Some(n) => out.push(n),
            None => c.err(
                &[k(name), Segment::Index(i)],
                format!("`{item}` is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)"),
            ),
        }
    }
    out
}
