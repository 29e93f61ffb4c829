//! Conntrack over netlink: the kernel's connection table, for what NFLOG
//! cannot say: how many bytes a connection carried, whether it is still open,
//! and connections that no logged rule saw (opened before the agent started,
//! or not logged at the workload's visibility level).
//!
//! Two ways in, both parsed here with `netlink-packet-netfilter`'s conntrack
//! messages: events (NEW and DESTROY, on the collector's socket, see
//! [`super::nflog`]) and a dump of the whole table, taken every report
//! interval for connections that stay open. Counters are only present when
//! the namespace counts them (`net.netfilter.nf_conntrack_acct = 1`); without
//! them flows carry no bytes, as the issue allows.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, NLA_TYPE_MASK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::constants::NETLINK_NETFILTER;
use netlink_sys::Socket;

/// The multicast group of new connections (`NFNLGRP_CONNTRACK_NEW`).
pub const GROUP_NEW: u32 = 1;
/// The multicast group of ended connections (`NFNLGRP_CONNTRACK_DESTROY`).
pub const GROUP_DESTROY: u32 = 3;

/// `CTA_COUNTERS_ORIG` / `CTA_COUNTERS_REPLY` (nested; the crate leaves them raw).
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
/// `CTA_COUNTERS_BYTES` inside them (a big-endian u64).
const CTA_COUNTERS_BYTES: u16 = 2;
/// `TCP_CONNTRACK_ESTABLISHED`: a TCP connection destroyed in this state
/// timed out rather than closed.
const TCP_ESTABLISHED: u8 = 3;
/// `TCP_CONNTRACK_FIN_WAIT` to `TCP_CONNTRACK_CLOSE`: the endpoints are
/// closing or have closed it.
const TCP_CLOSING: std::ops::RangeInclusive<u8> = 4..=8;

/// A connection's original direction (who opened it, to what).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// The opener's address.
    pub src: IpAddr,
    /// The address it opened to.
    pub dst: IpAddr,
    /// IANA protocol.
    pub proto: u8,
    /// The opener's port (0 for protocols without ports).
    pub src_port: u16,
    /// The port opened to.
    pub dst_port: u16,
}

/// What the kernel said about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// It was confirmed (its first packet passed the firewall).
    New,
    /// It is still in the table (a dump).
    Active,
    /// Its endpoints closed it (a TCP FIN or RST was seen), but conntrack
    /// keeps it for a while (TIME_WAIT): over, not yet destroyed.
    Closing,
    /// It ended: closed, or timed out (`timed_out`).
    Destroyed {
        /// Removed by a timeout rather than by its endpoints.
        timed_out: bool,
    },
}

/// One conntrack message, reduced to what flow summaries need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// What happened.
    pub event: ConnEvent,
    /// The connection.
    pub tuple: FiveTuple,
    /// Bytes opener → peer and back so far (`None`: not counted).
    pub bytes: Option<(u64, u64)>,
}

fn tuple_of(parts: &[Tuple]) -> Option<FiveTuple> {
    let (mut src, mut dst, mut proto, mut sp, mut dp) = (None, None, None, 0, 0);
    for p in parts {
        match p {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sp = *n,
                        ProtoTuple::DestinationPort(n) => dp = *n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(FiveTuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        src_port: sp,
        dst_port: dp,
    })
}

/// The byte count inside a raw `CTA_COUNTERS_*` attribute.
fn counted_bytes(nla: &impl Nla) -> Option<u64> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    NlasIterator::new(&value[..])
        .filter_map(|n: Result<NlaBuffer<&[u8]>, _>| n.ok())
        .find(|n| n.kind() & NLA_TYPE_MASK == CTA_COUNTERS_BYTES)
        .and_then(|n| n.value().try_into().ok().map(u64::from_be_bytes))
}

/// Reads a conntrack message; `None` for anything else (NFLOG, errors, other
/// conntrack messages) or one without an original tuple. `dumped` says the
/// message answers a dump (the entry is live), not an event.
pub fn parse(msg: &NetlinkMessage<NetfilterMessage>, dumped: bool) -> Option<Conn> {
    let NetlinkPayload::InnerMessage(NetfilterMessage { inner, .. }) = &msg.payload else {
        return None;
    };
    let NetfilterMessageInner::Conntrack(ct) = inner else {
        return None;
    };
    let (attrs, destroyed) = match ct {
        ConntrackMessage::New(a) => (a, false),
        ConntrackMessage::Delete(a) => (a, true),
        _ => return None,
    };
    let (mut tuple, mut orig, mut reply, mut tcp_state) = (None, None, None, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => tuple = tuple_of(t),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(tcp) = i {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                tcp_state = Some(*s);
                            }
                        }
                    }
                }
            }
            // The crate keeps the kernel's NLA_F_NESTED flag in a raw kind.
            ConntrackAttribute::Other(nla) if nla.kind() & NLA_TYPE_MASK == CTA_COUNTERS_ORIG => {
                orig = counted_bytes(nla)
            }
            ConntrackAttribute::Other(nla) if nla.kind() & NLA_TYPE_MASK == CTA_COUNTERS_REPLY => {
                reply = counted_bytes(nla)
            }
            _ => {}
        }
    }
    let tuple = tuple?;
    let event = if destroyed {
        // UDP and the like always end by timeout; TCP did when it was still
        // established (no FIN or RST seen).
        let timed_out = tcp_state.map_or(tuple.proto != 6, |s| s == TCP_ESTABLISHED);
        ConnEvent::Destroyed { timed_out }
    } else if tcp_state.is_some_and(|s| TCP_CLOSING.contains(&s)) {
        ConnEvent::Closing
    } else if dumped {
        ConnEvent::Active
    } else {
        ConnEvent::New
    };
    Some(Conn {
        event,
        tuple,
        bytes: orig.zip(reply),
    })
}

/// The whole table of the calling thread's network namespace, both address
/// families. Blocks at most `poll` per read.
pub fn dump(poll: Duration) -> io::Result<Vec<Conn>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    super::socket::set_recv_timeout(&socket, poll)?;
    let mut out = Vec::new();
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut req = NetlinkMessage::new(
            hdr,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                ConntrackMessage::Get(vec![]),
            )),
        );
        req.finalize();
        let mut bytes = vec![0; req.buffer_len()];
        req.serialize(&mut bytes[..]);
        socket.send(&bytes, 0)?;
        let mut buf = vec![0; 1 << 16];
        'reply: loop {
            let n = socket.recv(&mut &mut buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..n])
                else {
                    break 'reply;
                };
                match &msg.payload {
                    NetlinkPayload::Done(_) => break 'reply,
                    NetlinkPayload::Error(e) => match e.code {
                        None => break 'reply,
                        Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                    },
                    _ => {}
                }
                out.extend(parse(&msg, true));
                let len = msg.header.length as usize;
                if len == 0 {
                    break 'reply;
                }
                offset += (len + 3) & !3;
            }
        }
    }
    Ok(out)
}

/// Turns on byte counting in the calling process's network namespace
/// (`net.netfilter.nf_conntrack_acct`), so flows carry bytes. A sysctl write
/// at start-up, not part of the data path; failing it only costs the bytes.
pub fn enable_accounting() -> io::Result<()> {
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", b"1")
}
