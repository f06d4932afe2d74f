//! Which addresses a metadata document may be fetched from: public ones
//! only, by the IANA special-purpose registries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether an address may be fetched from: not in the IANA IPv4 or IPv6
/// Special-Purpose Address Registries (even the entries marked globally
/// reachable: anycast relays and AS112 serve no documents), not multicast,
/// and for IPv6 inside global unicast 2000::/3. NAT64 (64:ff9b::/96)
/// addresses are judged by the IPv4 address they carry; other formats that
/// embed IPv4 (mapped, compatible, 6to4, Teredo) are refused.
pub(crate) fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(*v4),
        IpAddr::V6(v6) => is_public_v6(*v6),
    }
}

/// IPv4 prefixes that are never fetched from.
const NON_PUBLIC_V4: [(Ipv4Addr, u8); 22] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),          // "this network", RFC 791
    (Ipv4Addr::new(10, 0, 0, 0), 8),         // private, RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),      // shared address space, RFC 6598
    (Ipv4Addr::new(127, 0, 0, 0), 8),        // loopback, RFC 1122
    (Ipv4Addr::new(169, 254, 0, 0), 16),     // link local, RFC 3927
    (Ipv4Addr::new(172, 16, 0, 0), 12),      // private, RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),       // IETF protocol assignments, RFC 6890
    (Ipv4Addr::new(192, 0, 2, 0), 24),       // TEST-NET-1, RFC 5737
    (Ipv4Addr::new(192, 31, 196, 0), 24),    // AS112-v4, RFC 7535
    (Ipv4Addr::new(192, 52, 193, 0), 24),    // AMT, RFC 7450
    (Ipv4Addr::new(192, 88, 99, 0), 24),     // 6to4 relay anycast, RFC 7526
    (Ipv4Addr::new(192, 168, 0, 0), 16),     // private, RFC 1918
    (Ipv4Addr::new(192, 175, 48, 0), 24),    // AS112 direct delegation, RFC 7534
    (Ipv4Addr::new(198, 18, 0, 0), 15),      // benchmarking, RFC 2544
    (Ipv4Addr::new(198, 51, 100, 0), 24),    // TEST-NET-2, RFC 5737
    (Ipv4Addr::new(203, 0, 113, 0), 24),     // TEST-NET-3, RFC 5737
    (Ipv4Addr::new(224, 0, 0, 0), 4),        // multicast, RFC 5771
    (Ipv4Addr::new(240, 0, 0, 0), 4),        // reserved, RFC 1112
    (Ipv4Addr::new(255, 255, 255, 255), 32), // limited broadcast, RFC 919
    // Inside the above, listed for the registry's sake.
    (Ipv4Addr::new(192, 0, 0, 0), 29), // IPv4 service continuity, RFC 7335
    (Ipv4Addr::new(192, 0, 0, 170), 31), // NAT64/DNS64 discovery, RFC 7050
    (Ipv4Addr::new(192, 0, 0, 8), 32), // IPv4 dummy address, RFC 7600
];

/// IPv6 prefixes inside 2000::/3 that are never fetched from.
const NON_PUBLIC_V6: [(Ipv6Addr, u8); 5] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (Teredo, ORCHID, benchmarking, AMT, AS112), RFC 2928
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation, RFC 3849
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4, RFC 3056
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48), // AS112 direct delegation, RFC 7534
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation, RFC 9637
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !NON_PUBLIC_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        bits & mask == u32::from(net) & mask
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let in_prefix = |net: Ipv6Addr, len: u8| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        bits & mask == u128::from(net) & mask
    };
    // NAT64 well-known prefix, RFC 6052: the IPv4 address decides.
    if in_prefix(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    // Global unicast only (RFC 4291 §2.4): this leaves out ::/8 (with the
    // unspecified, loopback, IPv4-compatible and IPv4-mapped addresses),
    // 64:ff9b:1::/48, 100::/64, fc00::/7, fe80::/10, fec0::/10, ff00::/8, ...
    in_prefix(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        && !NON_PUBLIC_V6.iter().any(|&(net, len)| in_prefix(net, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IANA IPv4 Special-Purpose Address Registry (2025), multicast,
    /// and the IPv6 Special-Purpose Address Registry plus the other IPv6
    /// ranges outside global unicast that a name could resolve to.
    const NEVER_FETCHED: [(&str, &str); 49] = [
        ("0.0.0.0/8", "RFC 791 this network"),
        ("10.0.0.0/8", "RFC 1918 private"),
        ("100.64.0.0/10", "RFC 6598 shared address space"),
        ("127.0.0.0/8", "RFC 1122 loopback"),
        ("169.254.0.0/16", "RFC 3927 link local"),
        ("172.16.0.0/12", "RFC 1918 private"),
        ("192.0.0.0/24", "RFC 6890 IETF protocol assignments"),
        ("192.0.0.0/29", "RFC 7335 IPv4 service continuity"),
        ("192.0.0.8/32", "RFC 7600 IPv4 dummy address"),
        ("192.0.0.9/32", "RFC 7723 PCP anycast"),
        ("192.0.0.10/32", "RFC 8155 TURN anycast"),
        ("192.0.0.170/32", "RFC 8880 NAT64/DNS64 discovery"),
        ("192.0.0.171/32", "RFC 8880 NAT64/DNS64 discovery"),
        ("192.0.2.0/24", "RFC 5737 TEST-NET-1"),
        ("192.31.196.0/24", "RFC 7535 AS112-v4"),
        ("192.52.193.0/24", "RFC 7450 AMT"),
        ("192.88.99.0/24", "RFC 7526 deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "RFC 1918 private"),
        ("192.175.48.0/24", "RFC 7534 AS112 direct delegation"),
        ("198.18.0.0/15", "RFC 2544 benchmarking"),
        ("198.51.100.0/24", "RFC 5737 TEST-NET-2"),
        ("203.0.113.0/24", "RFC 5737 TEST-NET-3"),
        ("224.0.0.0/4", "RFC 5771 multicast"),
        ("240.0.0.0/4", "RFC 1112 reserved"),
        ("255.255.255.255/32", "RFC 919 limited broadcast"),
        ("::1/128", "RFC 4291 loopback"),
        ("::/128", "RFC 4291 unspecified"),
        ("::ffff:0:0/96", "RFC 4291 IPv4-mapped"),
        ("::/96", "RFC 4291 IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "RFC 8215 local-use IPv4/IPv6 translation"),
        ("100::/64", "RFC 6666 discard-only"),
        ("100:0:0:1::/64", "RFC 9780 dummy IPv6 prefix"),
        ("2001::/23", "RFC 2928 IETF protocol assignments"),
        ("2001::/32", "RFC 4380 Teredo"),
        ("2001:1::1/128", "RFC 7723 PCP anycast"),
        ("2001:1::2/128", "RFC 8155 TURN anycast"),
        ("2001:2::/48", "RFC 5180 benchmarking"),
        ("2001:3::/32", "RFC 7450 AMT"),
        ("2001:4:112::/48", "RFC 7535 AS112-v6"),
        ("2001:20::/28", "RFC 7343 ORCHIDv2"),
        ("2001:db8::/32", "RFC 3849 documentation"),
        ("2002::/16", "RFC 3056 6to4"),
        ("2620:4f:8000::/48", "RFC 7534 AS112 direct delegation"),
        ("3fff::/20", "RFC 9637 documentation"),
        ("5f00::/16", "RFC 9602 SRv6 SIDs"),
        ("fc00::/7", "RFC 4193 unique local"),
        ("fe80::/10", "RFC 4291 link local"),
        ("fec0::/10", "RFC 3879 site local (deprecated)"),
        ("ff00::/8", "RFC 4291 multicast"),
    ];

    /// The first and last address of a prefix.
    fn bounds(prefix: &str) -> (IpAddr, IpAddr) {
        let (net, len) = prefix.split_once('/').unwrap();
        let len: u32 = len.parse().unwrap();
        match net.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => {
                let host = u32::MAX.checked_shr(len).unwrap_or(0);
                let first = u32::from(v4) & !host;
                (IpAddr::V4(first.into()), IpAddr::V4((first | host).into()))
            }
            IpAddr::V6(v6) => {
                let host = u128::MAX.checked_shr(len).unwrap_or(0);
                let first = u128::from(v6) & !host;
                (IpAddr::V6(first.into()), IpAddr::V6((first | host).into()))
            }
        }
    }

    #[test]
    fn iana_special_purpose_addresses_are_never_fetched() {
        for (prefix, source) in NEVER_FETCHED {
            let (first, last) = bounds(prefix);
            let middle = match (first, last) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    IpAddr::V4((u32::from(a) / 2 + u32::from(b) / 2).into())
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    IpAddr::V6((u128::from(a) / 2 + u128::from(b) / 2).into())
                }
                _ => unreachable!(),
            };
            for ip in [first, middle, last] {
                assert!(!is_public(&ip), "{ip} in {prefix} ({source})");
            }
        }
    }

    #[test]
    fn addresses_that_embed_a_private_ipv4_address_are_never_fetched() {
        for ip in [
            "::ffff:127.0.0.1",     // IPv4-mapped
            "::ffff:93.184.216.34", // mapped, even when public: use the IPv4 address
            "::127.0.0.1",          // IPv4-compatible
            "::169.254.169.254",
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe",                   // NAT64 of 169.254.169.254
            "64:ff9b::a00:1",                       // NAT64 of 10.0.0.1
            "64:ff9b::c0a8:101",                    // NAT64 of 192.168.1.1
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::",                     // 6to4 of 169.254.169.254
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "2001:0:0:0:0:0:f5ff:fffe",             // Teredo, client 10.0.0.1 obfuscated
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn public_addresses_next_to_the_special_ranges_are_fetched() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:2800:220:1:248:1893:25c8:1946",
            "2001:200::1",
            "2003::1",
            "2620:4f:8001::1",
            "3ffe:ffff::1",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
        ] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }
}
