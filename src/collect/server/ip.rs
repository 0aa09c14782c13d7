//! The client address of a hit, and its anonymised form (the only form that is published).
//!
//! The client is the TCP peer, unless the peer is one of `[collect] trusted_proxies`: then it is
//! the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (each proxy
//! appends the address it saw, so everything left of the first untrusted hop may be forged).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Trusted proxies as (network, prefix length), from `config::parse_cidr`.
pub type Trusted = [(IpAddr, u8)];

/// IPv4 to its /24 (`203.0.113.77` → `203.0.113.0`), IPv6 to its /48
/// (`2001:db8:abcd:12::1` → `2001:db8:abcd::`). IPv4-mapped IPv6 addresses count as IPv4.
pub fn anonymise(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// The client address of a request from `peer` carrying the `X-Forwarded-For` values `xff`
/// (every header line, in order).
pub fn client_ip<'a>(
    peer: IpAddr,
    xff: impl IntoIterator<Item = &'a str>,
    trusted: &Trusted,
) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<&str> = xff.into_iter().flat_map(|v| v.split(',')).collect();
    // Walk from the right: skip trusted proxies; the first untrusted address is the client.
    // An unreadable entry ends the walk (nothing to its left can be believed): the client is
    // then the last address read, the nearest proxy that forwarded the garbage. When every
    // entry is a trusted proxy, the left-most one is the furthest we know.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// Whether `ip` lies in one of the trusted ranges.
pub fn is_trusted(ip: IpAddr, trusted: &Trusted) -> bool {
    let ip = canonical(ip);
    trusted
        .iter()
        .any(|&(net, len)| in_range(ip, canonical(net), len))
}

fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:443`. Anything else (`unknown`, obfuscated ids, garbage) is `None`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|v6| canonical(v6.into()))
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack listener reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(list: &[&str]) -> Vec<(IpAddr, u8)> {
        list.iter()
            .map(|s| crate::collect::config::parse_cidr(s).unwrap())
            .collect()
    }

    #[test]
    fn ipv4_keeps_its_24_and_ipv6_its_48() {
        assert_eq!(anonymise(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(
            anonymise(ip("2001:db8:abcd:12:1:2:3:4")),
            ip("2001:db8:abcd::")
        );
        assert_eq!(anonymise(ip("::1")), ip("::"));
        assert_eq!(anonymise(ip("::ffff:198.51.100.9")), ip("198.51.100.0"));
        assert_eq!(
            anonymise(ip("2001:db8:abcd::")).to_string(),
            "2001:db8:abcd::"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.1"]);
        let xff = ["198.51.100.9, 10.1.2.3"];
        assert_eq!(client_ip(ip("203.0.113.5"), xff, &t), ip("203.0.113.5"));
        assert_eq!(client_ip(ip("192.0.2.1"), xff, &t), ip("198.51.100.9"));
        assert_eq!(client_ip(ip("10.9.9.9"), xff, &t), ip("198.51.100.9"));
        assert_eq!(
            client_ip(ip("::ffff:10.9.9.9"), xff, &t),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client forged "1.1.1.1"; its real address was appended by the first proxy.
        let xff = ["1.1.1.1, 198.51.100.9", "10.0.0.2"];
        assert_eq!(client_ip(ip("10.0.0.1"), xff, &t), ip("198.51.100.9"));
        // Every hop trusted: the left-most.
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["10.0.0.7, 10.0.0.2"], &t),
            ip("10.0.0.7")
        );
        // No header: the peer.
        assert_eq!(client_ip(ip("10.0.0.1"), [], &t), ip("10.0.0.1"));
        // Garbage ends the walk at the last readable hop.
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["198.51.100.9, unknown, 10.0.0.2"], &t),
            ip("10.0.0.2")
        );
        // Ports and brackets.
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["[2001:db8::1]:443"], &t),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["198.51.100.9:5678"], &t),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn ranges_match_by_prefix() {
        let t = trusted(&["2001:db8::/32", "0.0.0.0/0"]);
        assert!(is_trusted(ip("2001:db8:ffff::1"), &t));
        assert!(!is_trusted(ip("2001:db9::1"), &t));
        assert!(is_trusted(ip("8.8.8.8"), &t));
        let none = trusted(&["::/0"]);
        assert!(is_trusted(ip("2001:db9::1"), &none));
        assert!(!is_trusted(ip("8.8.8.8"), &none));
    }
}
