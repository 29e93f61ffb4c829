//! The few header fields a flow summary needs, read from the raw IP packet
//! NFLOG hands over (no text, no /proc).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Source, destination, IANA protocol and ports (0 when the protocol has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    // TCP, UDP, SCTP, UDP-Lite: source and destination port lead the header.
    match (proto, l4) {
        (6 | 17 | 132 | 136, [a, b, c, d, ..]) => {
            (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
        }
        _ => (0, 0),
    }
}

/// Parses an IPv4 or IPv6 packet; `None` if it is truncated or neither.
/// IPv6 extension headers are not walked: such a packet is reported with the
/// extension's number as protocol and no ports, which is rare for new
/// connections and never wrong about the addresses.
pub fn parse(p: &[u8]) -> Option<Header> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let proto = p[9];
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let (src_port, dst_port) = ports(proto, &p[ihl..]);
            Some(Header {
                src: src.into(),
                dst: dst.into(),
                proto,
                src_port,
                dst_port,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let proto = p[6];
            let addr = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&p[o..o + 16]);
                Ipv6Addr::from(b)
            };
            let (src_port, dst_port) = ports(proto, &p[40..]);
            Some(Header {
                src: addr(8).into(),
                dst: addr(24).into(),
                proto,
                src_port,
                dst_port,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_over_ipv4_and_udp_over_ipv6_are_read() {
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        v4.extend_from_slice(&[0xc3, 0x50, 0x1f, 0x90]); // 50000 -> 8080
        let h = parse(&v4).expect("v4");
        assert_eq!(
            (h.src, h.dst, h.proto, h.src_port, h.dst_port),
            (
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                6,
                50000,
                8080
            )
        );
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 53, 0, 53]);
        let h = parse(&v6).expect("v6");
        assert_eq!((h.proto, h.dst_port), (17, 53));
        assert_eq!(h.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn truncated_or_foreign_packets_are_refused() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x45, 0, 0]), None);
        assert_eq!(parse(&[0x4f; 30]), None); // IHL 60 > length
        assert_eq!(parse(&[0x60; 20]), None);
        assert_eq!(parse(&[0x20; 40]), None);
    }
}
