//! `IpAcl::client_ip` with arbitrary `X-Forwarded-For` / `X-Real-IP` bytes: never panics, and
//! behind a trusted proxy it never judges a trusted address (the proxy's own, say) unless
//! every hop says so. What it returns is checked against a plain reading of the headers: the
//! right-most `X-Forwarded-For` hop that is not a trusted proxy, with every hop right of it
//! readable and trusted; the left-most hop when all are trusted; `X-Real-IP` only without
//! `X-Forwarded-For`; the peer only when neither is there.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use sophgate::fuzzing::IpAcl;

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// An independent reading of one hop: `ip`, `ip:port`, `[v6]`, `[v6]:port`, spaces around.
fn hop(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(canonical(ip))
}

fn trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    nets.iter().any(|n| n.contains(&canonical(ip)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let nets: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "fd00::/8"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let acl = IpAcl::new(&[], &[], &nets);
    let peer = match sel % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        1 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        2 => IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    };
    // Header lines separated by 0x00: each starts with a byte picking X-Forwarded-For or
    // X-Real-IP; values `HeaderValue` refuses (control bytes) are dropped as hyper would.
    let mut headers = HeaderMap::new();
    let mut xff: Vec<Vec<u8>> = Vec::new();
    let mut xri: Vec<Vec<u8>> = Vec::new();
    for line in data.split(|&b| b == 0) {
        let Some((&kind, value)) = line.split_first() else {
            continue;
        };
        let Ok(v) = HeaderValue::from_bytes(value) else {
            continue;
        };
        if kind % 3 == 0 {
            headers.append("x-real-ip", v);
            xri.push(value.to_vec());
        } else {
            headers.append("x-forwarded-for", v);
            xff.push(value.to_vec());
        }
    }
    let got = acl.client_ip(peer, &headers);
    if !trusted(peer, &nets) {
        assert_eq!(
            got.ok(),
            Some(canonical(peer)),
            "an untrusted peer is the client"
        );
        return;
    }
    // The plain reading.
    let expected: Option<IpAddr> = if !xff.is_empty() {
        let hops: Vec<&[u8]> = xff.iter().flat_map(|v| v.split(|&b| b == b',')).collect();
        let mut answer = None;
        let mut all_trusted = true;
        for raw in hops.iter().rev() {
            match hop(raw) {
                None => {
                    all_trusted = false;
                    break;
                }
                Some(ip) if !trusted(ip, &nets) => {
                    answer = Some(ip);
                    all_trusted = false;
                    break;
                }
                Some(_) => {}
            }
        }
        if all_trusted {
            hops.first().and_then(|h| hop(h))
        } else {
            answer
        }
    } else if let Some(v) = xri.first() {
        hop(v)
    } else {
        Some(canonical(peer))
    };
    assert_eq!(
        got.as_ref().ok(),
        expected.as_ref(),
        "xff {xff:?} x-real-ip {xri:?}: {:?}",
        got.as_ref().err().map(|e| &e.message)
    );
    if let Ok(ip) = got {
        if trusted(ip, &nets) && !xff.is_empty() {
            let every = xff
                .iter()
                .flat_map(|v| v.split(|&b| b == b','))
                .all(|h| hop(h).is_some_and(|ip| trusted(ip, &nets)));
            assert!(
                every,
                "a trusted address judged while some hop is not trusted"
            );
        }
    }
});
