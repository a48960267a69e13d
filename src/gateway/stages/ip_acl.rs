//! Stage 1: who is calling, from where. Resolves the client IP (the TCP peer, or a forwarded
//! header when — and only when — the peer is a trusted proxy) and applies the allow/deny lists.
//! Deny wins; an empty allow list allows everyone.

use std::collections::HashSet;
use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::error::{ErrorKind, GatewayError};

/// A set of CIDRs with lookup cost proportional to the number of distinct prefix lengths,
/// not the number of entries: each length has a hash set of masked network addresses.
#[derive(Debug, Default, Clone)]
pub struct CidrSet {
    v4: Vec<(u8, HashSet<u32>)>,
    v6: Vec<(u8, HashSet<u128>)>,
    len: usize,
}

fn mask4(addr: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - prefix as u32))
    }
}

fn mask6(addr: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - prefix as u32))
    }
}

impl CidrSet {
    pub fn new(nets: &[IpNet]) -> Self {
        let mut set = CidrSet::default();
        for net in nets {
            match net {
                IpNet::V4(n) => {
                    let p = n.prefix_len();
                    let a = mask4(u32::from(n.network()), p);
                    match set.v4.iter_mut().find(|(l, _)| *l == p) {
                        Some((_, s)) => {
                            s.insert(a);
                        }
                        None => set.v4.push((p, HashSet::from([a]))),
                    }
                }
                IpNet::V6(n) => {
                    let p = n.prefix_len();
                    let a = mask6(u128::from(n.network()), p);
                    match set.v6.iter_mut().find(|(l, _)| *l == p) {
                        Some((_, s)) => {
                            s.insert(a);
                        }
                        None => set.v6.push((p, HashSet::from([a]))),
                    }
                }
            }
            set.len += 1;
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().any(|(p, s)| s.contains(&mask4(a, *p)))
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().any(|(p, s)| s.contains(&mask6(a, *p)))
            }
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket reports) is treated as IPv4,
/// so a v4 rule cannot be bypassed by connecting over a v6 socket.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The compiled ACL of one generation.
#[derive(Debug, Clone, Default)]
pub struct IpAcl {
    allow: CidrSet,
    deny: CidrSet,
    trusted: CidrSet,
}

impl IpAcl {
    pub fn new(allow: &[IpNet], deny: &[IpNet], trusted_proxies: &[IpNet]) -> Self {
        IpAcl {
            allow: CidrSet::new(allow),
            deny: CidrSet::new(deny),
            trusted: CidrSet::new(trusted_proxies),
        }
    }

    /// The address the ACL judges: the peer, unless the peer is a trusted proxy, in which case
    /// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (or
    /// `X-Real-IP` when there is no `X-Forwarded-For`).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return peer;
        }
        let mut saw_xff = false;
        // Hops are appended left to right; walk from the nearest one back.
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            saw_xff = true;
            let Ok(s) = value.to_str() else {
                return peer;
            };
            for part in s.split(',') {
                match parse_hop(part) {
                    Some(ip) => hops.push(ip),
                    // A malformed hop: stop believing anything further left.
                    None => hops.clear(),
                }
            }
        }
        if saw_xff {
            for ip in hops.iter().rev() {
                if !self.trusted.contains(*ip) {
                    return *ip;
                }
            }
            return hops.first().copied().unwrap_or(peer);
        }
        if let Some(real) = headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_hop)
        {
            return real;
        }
        peer
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), GatewayError> {
        if self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip)) {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                "ip_not_allowed",
                format!("Access denied for IP {ip}"),
            ));
        }
        Ok(())
    }
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // `[v6]:port` or `v4:port`
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::parse_net;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_set_matches_v4_v6_and_mapped() {
        let set = CidrSet::new(&nets(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]));
        assert!(set.contains(ip("10.9.8.7")));
        assert!(set.contains(ip("192.168.1.7")));
        assert!(!set.contains(ip("192.168.1.8")));
        assert!(set.contains(ip("2001:db8::1")));
        assert!(!set.contains(ip("2001:db9::1")));
        assert!(set.contains(ip("::ffff:10.1.1.1")));
    }

    #[test]
    fn deny_wins_and_empty_allow_allows() {
        let acl = IpAcl::new(&nets(&["10.0.0.0/8"]), &nets(&["10.0.0.5"]), &[]);
        assert!(acl.check(ip("10.0.0.4")).is_ok());
        assert!(acl.check(ip("10.0.0.5")).is_err());
        assert!(acl.check(ip("11.0.0.1")).is_err());
        let open = IpAcl::new(&[], &nets(&["1.2.3.4"]), &[]);
        assert!(open.check(ip("8.8.8.8")).is_ok());
        assert!(open.check(ip("1.2.3.4")).is_err());
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let acl = IpAcl::new(&[], &[], &nets(&["127.0.0.1", "10.0.0.0/8"]));
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 5.5.5.5, 10.1.1.1".parse().unwrap(),
        );
        // untrusted peer: header ignored
        assert_eq!(acl.client_ip(ip("9.9.9.9"), &h), ip("9.9.9.9"));
        // trusted peer: right-most untrusted hop
        assert_eq!(acl.client_ip(ip("127.0.0.1"), &h), ip("5.5.5.5"));
        let mut r = HeaderMap::new();
        r.insert("x-real-ip", "7.7.7.7".parse().unwrap());
        assert_eq!(acl.client_ip(ip("127.0.0.1"), &r), ip("7.7.7.7"));
        assert_eq!(acl.client_ip(ip("8.8.8.8"), &r), ip("8.8.8.8"));
    }
}
