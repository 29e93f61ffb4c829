//! Address sets: the peers of a compiled rule, as merged IPv4 and IPv6 intervals.
//!
//! Rules are resolved to sets of addresses (workload interfaces, IP lists with
//! exclusions); the firewall wants them as few CIDRs as possible. Intervals make
//! union and exclusion exact and cheap; [`AddrSet::cidrs`] turns them into the
//! minimal CIDR cover.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// An address, range or CIDR that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IP address, CIDR (a.b.c.d/n) or range (a-b): {reason}")]
pub struct AddrError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

/// An address family; IPv4 and IPv6 never mix in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4
    V4,
    /// IPv6
    V6,
}

impl Family {
    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }
}

/// One inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpRange {
    /// The family.
    pub family: Family,
    /// First address (as an integer).
    pub first: u128,
    /// Last address, inclusive.
    pub last: u128,
}

fn to_int(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(a) => (Family::V4, u32::from(a) as u128),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

fn to_ip(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl IpRange {
    /// One address.
    pub fn host(ip: IpAddr) -> Self {
        let (family, v) = to_int(ip);
        IpRange {
            family,
            first: v,
            last: v,
        }
    }

    /// Parses `a.b.c.d`, `a.b.c.d/n`, `a.b.c.d-e.f.g.h` (and the IPv6 forms).
    pub fn parse(s: &str) -> Result<Self, AddrError> {
        let err = |reason: &str| AddrError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if let Some((a, b)) = t.split_once('-') {
            let a: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| err("the start is not an address"))?;
            let b: IpAddr = b
                .trim()
                .parse()
                .map_err(|_| err("the end is not an address"))?;
            let (fa, va) = to_int(a);
            let (fb, vb) = to_int(b);
            if fa != fb {
                return Err(err("a range cannot mix IPv4 and IPv6"));
            }
            if va > vb {
                return Err(err("the start is after the end"));
            }
            return Ok(IpRange {
                family: fa,
                first: va,
                last: vb,
            });
        }
        if let Some((a, n)) = t.split_once('/') {
            let a: IpAddr = a
                .parse()
                .map_err(|_| err("the network is not an address"))?;
            let (family, v) = to_int(a);
            let n: u32 = n
                .parse()
                .map_err(|_| err("the prefix length is not a number"))?;
            if n > family.bits() {
                return Err(err(&format!(
                    "the prefix length must be 0-{}",
                    family.bits()
                )));
            }
            let host_bits = family.bits() - n;
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            if v & mask != 0 {
                return Err(err("host bits are set; write the network address"));
            }
            return Ok(IpRange {
                family,
                first: v,
                last: v | mask,
            });
        }
        let ip: IpAddr = t.parse().map_err(|_| err("not an address"))?;
        Ok(Self::host(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", to_ip(self.family, self.first))
        } else {
            write!(
                f,
                "{}-{}",
                to_ip(self.family, self.first),
                to_ip(self.family, self.last)
            )
        }
    }
}

/// A set of addresses: sorted, disjoint, non-adjacent inclusive intervals per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AddrSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn normalize(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn subtract(base: &[(u128, u128)], cut: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut a, b) in base {
        while j < cut.len() && cut[j].1 < a {
            j += 1;
        }
        let mut k = j;
        let mut alive = true;
        while k < cut.len() && cut[k].0 <= b {
            let (ca, cb) = cut[k];
            if ca > a {
                out.push((a, ca - 1));
            }
            if cb >= b {
                alive = false;
                break;
            }
            a = cb + 1;
            k += 1;
        }
        if alive {
            out.push((a, b));
        }
    }
    out
}

fn contains(v: &[(u128, u128)], x: u128) -> bool {
    let i = v.partition_point(|&(_, b)| b < x);
    i < v.len() && v[i].0 <= x
}

impl AddrSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of the given ranges.
    pub fn from_ranges(ranges: impl IntoIterator<Item = IpRange>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for r in ranges {
            match r.family {
                Family::V4 => v4.push((r.first, r.last)),
                Family::V6 => v6.push((r.first, r.last)),
            }
        }
        AddrSet {
            v4: normalize(v4),
            v6: normalize(v6),
        }
    }

    /// A set of single addresses.
    pub fn from_ips(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        Self::from_ranges(ips.into_iter().map(IpRange::host))
    }

    /// Every address of both families.
    pub fn everything() -> Self {
        AddrSet {
            v4: vec![(0, Family::V4.max())],
            v6: vec![(0, Family::V6.max())],
        }
    }

    /// How many addresses the set holds (saturating): the narrowest of
    /// several sets holding an address is the least-privilege one to name.
    pub fn size(&self) -> u128 {
        self.v4
            .iter()
            .chain(&self.v6)
            .fold(0u128, |n, (a, b)| n.saturating_add(b - a).saturating_add(1))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match to_int(ip) {
            (Family::V4, v) => contains(&self.v4, v),
            (Family::V6, v) => contains(&self.v6, v),
        }
    }

    /// The union.
    pub fn union(&self, other: &AddrSet) -> AddrSet {
        AddrSet {
            v4: normalize(self.v4.iter().chain(&other.v4).copied().collect()),
            v6: normalize(self.v6.iter().chain(&other.v6).copied().collect()),
        }
    }

    /// Adds every range of `other` (in place, for building large unions).
    pub fn extend(&mut self, other: &AddrSet) {
        *self = self.union(other);
    }

    /// The addresses of `self` not in `other`.
    pub fn minus(&self, other: &AddrSet) -> AddrSet {
        AddrSet {
            v4: subtract(&self.v4, &other.v4),
            v6: subtract(&self.v6, &other.v6),
        }
    }

    /// The intervals of one family.
    pub fn ranges(&self, family: Family) -> impl Iterator<Item = IpRange> + '_ {
        let v = match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        };
        v.iter().map(move |&(first, last)| IpRange {
            family,
            first,
            last,
        })
    }

    /// The minimal list of CIDRs covering exactly this set's addresses of `family`,
    /// in address order.
    pub fn cidrs(&self, family: Family) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.ranges(family) {
            let bits = family.bits();
            let mut lo = r.first;
            loop {
                // The largest aligned block starting at `lo` that fits in the range.
                let align = if lo == 0 {
                    bits
                } else {
                    lo.trailing_zeros().min(bits)
                };
                let mut size_bits = align;
                while size_bits > 0 {
                    let span = if size_bits == 128 {
                        u128::MAX
                    } else {
                        (1u128 << size_bits) - 1
                    };
                    match lo.checked_add(span) {
                        Some(end) if end <= r.last => break,
                        _ => size_bits -= 1,
                    }
                }
                out.push(format!("{}/{}", to_ip(family, lo), bits - size_bits));
                let span = if size_bits == 128 {
                    u128::MAX
                } else {
                    (1u128 << size_bits) - 1
                };
                let end = lo + span;
                if end >= r.last {
                    break;
                }
                lo = end + 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> AddrSet {
        AddrSet::from_ranges(items.iter().map(|s| IpRange::parse(s).unwrap()))
    }

    #[test]
    fn parsing_accepts_addresses_cidrs_and_ranges_and_names_the_fault() {
        assert_eq!(
            IpRange::parse("10.0.0.0/8").unwrap().last,
            u32::from(Ipv4Addr::new(10, 255, 255, 255)) as u128
        );
        assert!(IpRange::parse("10.0.0.1/8")
            .unwrap_err()
            .reason
            .contains("host bits"));
        assert!(IpRange::parse("10.0.0.0/33")
            .unwrap_err()
            .reason
            .contains("0-32"));
        assert!(IpRange::parse("10.0.0.9-10.0.0.1")
            .unwrap_err()
            .reason
            .contains("after the end"));
        assert!(IpRange::parse("10.0.0.1-::1")
            .unwrap_err()
            .reason
            .contains("mix"));
        assert!(IpRange::parse("banana").is_err());
        assert_eq!(IpRange::parse("2001:db8::/32").unwrap().family, Family::V6);
        assert_eq!(IpRange::parse("::/0").unwrap().last, u128::MAX);
    }

    #[test]
    fn adjacent_addresses_merge_into_minimal_cidrs() {
        let s = set(&["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]);
        assert_eq!(s.cidrs(Family::V4), vec!["10.0.0.0/30", "10.0.0.5/32"]);
        let r = set(&["10.0.0.1-10.0.0.6"]);
        assert_eq!(
            r.cidrs(Family::V4),
            vec!["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(AddrSet::everything().cidrs(Family::V4), vec!["0.0.0.0/0"]);
        assert_eq!(AddrSet::everything().cidrs(Family::V6), vec!["::/0"]);
    }

    #[test]
    fn exclusions_cut_holes() {
        let s = set(&["10.0.0.0/24"]).minus(&set(&["10.0.0.128/25", "10.0.0.0"]));
        assert!(!s.contains("10.0.0.0".parse().unwrap()));
        assert!(s.contains("10.0.0.1".parse().unwrap()));
        assert!(!s.contains("10.0.0.200".parse().unwrap()));
        assert_eq!(
            s.cidrs(Family::V4),
            vec![
                "10.0.0.1/32",
                "10.0.0.2/31",
                "10.0.0.4/30",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26"
            ]
        );
        let v6 = set(&["2001:db8::/64"]).minus(&set(&["2001:db8::1"]));
        assert!(v6.contains("2001:db8::2".parse().unwrap()));
        assert!(!v6.contains("2001:db8::1".parse().unwrap()));
    }
}
