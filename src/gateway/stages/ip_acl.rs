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
    ///
    /// Fails closed (403 `ip_not_allowed`) when the peer is trusted but the hop that decides
    /// cannot be read: a hop that is not an address (`unknown`, bytes that are not visible
    /// ASCII, an empty hop) before any untrusted one, or an unreadable `X-Real-IP`. Falling
    /// back to the peer there would judge the trusted proxy's own address instead of the
    /// client's.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, GatewayError> {
        let peer = canonical(peer);
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return Ok(peer);
        }
        let mut forwarded = headers.get_all("x-forwarded-for").iter().peekable();
        if forwarded.peek().is_some() {
            // Hops are appended left to right (several headers in order): walk from the
            // nearest one back.
            let values: Vec<&[u8]> = forwarded.map(|v| v.as_bytes()).collect();
            let mut leftmost = None;
            for value in values.iter().rev() {
                for hop in value.rsplit(|&b| b == b',') {
                    let Some(ip) = parse_hop(hop) else {
                        return Err(unreadable("an X-Forwarded-For hop is not an address"));
                    };
                    if !self.trusted.contains(ip) {
                        return Ok(ip);
                    }
                    leftmost = Some(ip);
                }
            }
            // Every hop is a trusted proxy: the first one is where the request began.
            return leftmost.ok_or_else(|| unreadable("X-Forwarded-For has no hop"));
        }
        match headers.get("x-real-ip") {
            Some(v) => {
                parse_hop(v.as_bytes()).ok_or_else(|| unreadable("X-Real-IP is not an address"))
            }
            None => Ok(peer),
        }
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

/// The refusal of a request whose client address cannot be told.
fn unreadable(reason: &'static str) -> GatewayError {
    tracing::warn!(
        reason,
        "client address unreadable behind a trusted proxy; refused"
    );
    GatewayError::new(
        ErrorKind::Forbidden,
        "ip_not_allowed",
        "Access denied: the client address could not be determined",
    )
}

/// One hop: an address, `v4:port`, `[v6]` or `[v6]:port`, with optional whitespace around.
/// Anything else (including bytes that are not ASCII) is `None`.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw.trim_ascii()).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let bracketed = s.strip_prefix('[')?.strip_suffix(']')?;
    bracketed
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|v6| canonical(IpAddr::V6(v6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::parse_net;
    use http::HeaderValue;

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
        assert_eq!(acl.client_ip(ip("9.9.9.9"), &h).unwrap(), ip("9.9.9.9"));
        // trusted peer: right-most untrusted hop
        assert_eq!(acl.client_ip(ip("127.0.0.1"), &h).unwrap(), ip("5.5.5.5"));
        let mut r = HeaderMap::new();
        r.insert("x-real-ip", "7.7.7.7".parse().unwrap());
        assert_eq!(acl.client_ip(ip("127.0.0.1"), &r).unwrap(), ip("7.7.7.7"));
        assert_eq!(acl.client_ip(ip("8.8.8.8"), &r).unwrap(), ip("8.8.8.8"));
    }

    fn xff(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    /// Behind a trusted proxy that appends the client (nginx's `$proxy_add_x_forwarded_for`),
    /// whatever the client put in front, the right-most untrusted hop is the client; where the
    /// deciding hop cannot be read the request is refused, never judged as the proxy's address.
    #[test]
    fn unreadable_forwarded_hops_fail_closed() {
        let acl = IpAcl::new(&[], &nets(&["6.6.6.6"]), &nets(&["127.0.0.1"]));
        let proxy = ip("127.0.0.1");
        let refused = |h: &HeaderMap| {
            let e = acl.client_ip(proxy, h).unwrap_err();
            assert_eq!((e.status().as_u16(), e.code), (403, "ip_not_allowed"));
        };
        // Junk the client sent left of what the proxy appended does not matter.
        for junk in [
            &b"a\xff"[..],
            b"unknown",
            b"[::1",
            b"",
            b" , ",
            b"1.2.3.4.5",
        ] {
            let mut v = junk.to_vec();
            v.extend_from_slice(b", 6.6.6.6");
            let got = acl.client_ip(proxy, &xff(&[&v])).unwrap();
            assert_eq!(got, ip("6.6.6.6"), "{:?}", String::from_utf8_lossy(junk));
            assert!(acl.check(got).is_err());
        }
        // The deciding hop unreadable: refused, never judged as the proxy's own address.
        refused(&xff(&[b"6.6.6.6, a\xff"]));
        refused(&xff(&[b"6.6.6.6, unknown"]));
        refused(&xff(&[b"6.6.6.6,"]));
        refused(&xff(&[b"6.6.6.6, , 127.0.0.1"]));
        refused(&xff(&[b"6.6.6.6", b"garbage"]));
        refused(&xff(&[b"[::1"]));
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", HeaderValue::from_static("unknown"));
        refused(&real);
        // Bytes that are not visible ASCII, in a header value `to_str` refuses.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"6.6.6.6, 5.5.5.5\xff").unwrap(),
        );
        refused(&h);
        // Readable forms: bracketed IPv6 with and without port, v4 with port, many headers.
        assert_eq!(
            acl.client_ip(proxy, &xff(&[b"[2001:db8::1]"])).unwrap(),
            ip("2001:db8::1")
        );
        assert_eq!(
            acl.client_ip(proxy, &xff(&[b"[2001:db8::1]:443"])).unwrap(),
            ip("2001:db8::1")
        );
        assert_eq!(
            acl.client_ip(proxy, &xff(&[b"6.6.6.6:80"])).unwrap(),
            ip("6.6.6.6")
        );
        assert_eq!(
            acl.client_ip(
                proxy,
                &xff(&[b"1.1.1.1", b"2.2.2.2, 127.0.0.1", b"127.0.0.1"])
            )
            .unwrap(),
            ip("2.2.2.2")
        );
        // Only trusted hops: the left-most is the origin.
        assert_eq!(
            acl.client_ip(proxy, &xff(&[b"127.0.0.1"])).unwrap(),
            ip("127.0.0.1")
        );
    }
}
