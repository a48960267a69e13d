//! Header handling both sides of the HTTP layer share: the one hop-by-hop predicate, a
//! per-thread cache of parsed header names, and a per-thread pool of cleared header maps.

use std::cell::RefCell;

use http::header::{self, HeaderMap, HeaderName, InvalidHeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy never passes
/// them on (nor the headers a `Connection` header names).
// A static, not a const: a const array would be built and dropped at every use.
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: never passed on by a proxy, either way. (Headers
/// a `Connection` header names are hop-by-hop too; callers add those.) A `match` on the name
/// rather than a search of the list: it runs for every header of every request.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The comma-separated tokens of a `Connection` header value.
pub fn connection_tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Slots in a worker thread's header-name cache (a power of two).
const NAME_SLOTS: usize = 64;
/// Longer names are never cached.
const NAME_CACHE_MAX_LEN: usize = 32;

/// One remembered name: its bytes as sent (zero-padded) and the parsed name.
struct NameSlot {
    len: usize,
    raw: [u64; 4],
    name: Option<HeaderName>,
}

/// A header name from its bytes as sent. Clients and upstreams send the same dozen names on
/// every message (the openai SDK sends 15, seven of them `x-stainless-*`), and parsing one —
/// lower-casing it, matching it against the standard names, allocating a custom one — costs
/// more than finding it in a small direct-mapped cache of the names this worker thread saw.
/// A name that lands on a taken slot replaces it, so made-up names only bring back parsing.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    thread_local! {
        static NAMES: RefCell<[NameSlot; NAME_SLOTS]> = const {
            RefCell::new([const { NameSlot { len: 0, raw: [0; 4], name: None } }; NAME_SLOTS])
        };
    }
    if raw.is_empty() || raw.len() > NAME_CACHE_MAX_LEN {
        return HeaderName::from_bytes(raw);
    }
    let mut padded = [0u8; NAME_CACHE_MAX_LEN];
    padded[..raw.len()].copy_from_slice(raw);
    let mut key = [0u64; 4];
    let mut hash = raw.len() as u64;
    for (word, bytes) in key.iter_mut().zip(padded.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes);
        *word = u64::from_le_bytes(w);
        hash = (hash.rotate_left(5) ^ *word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    // The top bits are the best mixed by the multiplication.
    let index = (hash >> (u64::BITS - NAME_SLOTS.trailing_zeros())) as usize;
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        let slot = &mut names[index % NAME_SLOTS];
        if slot.len == raw.len() && slot.raw == key {
            if let Some(name) = &slot.name {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        *slot = NameSlot {
            len: raw.len(),
            raw: key,
            name: Some(name.clone()),
        };
        Ok(name)
    })
}

/// Cleared maps a worker thread keeps for the next message's head.
const SPARE_MAPS: usize = 16;
/// A map that grew past this many headers is not kept (one large head must not pin memory).
const SPARE_MAP_MAX_CAPACITY: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// A header map for a parsed head: a cleared one this thread kept, or a new one. Every
/// request and every answer head fills one; a map is two allocations (its index and its
/// entries), and taking a kept one saves both and their frees.
pub fn header_map(capacity: usize) -> HeaderMap {
    let spare = MAPS.with(|maps| maps.borrow_mut().pop());
    match spare {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a map whose message is done back for [`header_map`] (cleared here).
pub fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_MAX_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|maps| {
        let mut maps = maps.borrow_mut();
        if maps.len() < SPARE_MAPS {
            maps.push(map);
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn the_predicate_and_the_list_agree() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["content-type", "authorization", "x-te", "host"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn a_recycled_header_map_comes_back_empty_with_room() {
        let mut map = header_map(4);
        map.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let kept = map.capacity();
        recycle_header_map(map);
        let again = header_map(2);
        assert!(again.is_empty(), "{again:?}");
        assert!(again.get(header::AUTHORIZATION).is_none());
        assert_eq!(again.capacity(), kept, "the kept map, not a new one");
        // A map asked for more than the kept one holds grows to it.
        recycle_header_map(again);
        assert!(header_map(40).capacity() >= 40);
        // One that grew past the limit is not kept: the next map is a new one.
        let big = header_map(SPARE_MAP_MAX_CAPACITY + 1);
        recycle_header_map(big);
        assert!(header_map(1).capacity() <= SPARE_MAP_MAX_CAPACITY);
    }

    #[test]
    fn header_names_from_the_cache_are_the_parsed_names() {
        let names: Vec<String> = ["Content-Type", "content-type", "X-Stainless-Lang", "x-a"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..300).map(|i| format!("X-Made-Up-{i}")))
            .chain(std::iter::once(format!("x-{}", "long".repeat(20))))
            .collect();
        // Twice: the second round reads what the first one cached (and parses again the names
        // whose slots later names took).
        for _ in 0..2 {
            for raw in &names {
                let cached = header_name(raw.as_bytes()).unwrap();
                assert_eq!(cached, HeaderName::from_bytes(raw.as_bytes()).unwrap());
                assert_eq!(cached.as_str(), raw.to_ascii_lowercase());
            }
        }
        assert_eq!(header_name(b"Content-Type").unwrap(), header::CONTENT_TYPE);
        // A cached name never answers for the same bytes with a NUL added (the key is padded
        // with zeros, its length tells them apart).
        header_name(b"ab").unwrap();
        for bad in [
            &b""[..],
            b"bad name",
            b"x:y",
            b"caf\xc3\xa9",
            b"ab\0",
            b"ab\0\0",
        ] {
            assert!(header_name(bad).is_err(), "{bad:?}");
            assert!(header_name(bad).is_err(), "{bad:?} twice");
        }
    }
}
