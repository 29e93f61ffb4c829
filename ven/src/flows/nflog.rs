//! The NFLOG socket: the kernel sends every packet a rendered rule logs to
//! group [`sc_policy::flowlog::NFLOG_GROUP`] here, with the rule's prefix
//! (decision 0013 says why netlink-packet-netfilter).
//!
//! The same socket joins conntrack's NEW and DESTROY groups (see
//! [`super::conntrack`]): one reader, and the kernel's order between a
//! connection's logged decision (in the filter hook) and its conntrack NEW
//! (at confirmation, after the filter) is kept.
//!
//! A reader is blocking and bound to the network namespace of the thread that
//! opens it; the agent runs it on its own thread, like the nft applier.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::constants::NETLINK_NETFILTER;
use netlink_sys::Socket;
use sc_policy::flowlog::{self, Logged};

use super::conntrack::{self, Conn};
use super::packet;

/// One logged packet: what the rule decided, and the connection it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The decision and rule, from the prefix.
    pub logged: Logged,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IANA protocol.
    pub proto: u8,
    /// Source port (0 for protocols without ports).
    pub src_port: u16,
    /// Destination port (0 for protocols without ports).
    pub dst_port: u16,
}

/// What the kernel sent: a logged decision or a conntrack event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A rendered rule logged a new connection.
    Logged(Observed),
    /// Conntrack confirmed or ended a connection.
    Conn(Conn),
}

/// A bound NFLOG socket.
pub struct NflogReader {
    socket: Socket,
    buf: Vec<u8>,
}

/// Bytes of each packet the kernel copies: enough for the IP and transport
/// headers, never the payload.
const COPY_BYTES: u32 = 96;

impl NflogReader {
    /// Binds `group` in the calling thread's network namespace, and with
    /// `conntrack` joins conntrack's event groups. `poll` bounds how long
    /// [`NflogReader::read`] blocks, so the owner can notice shutdown.
    pub fn open(group: u16, poll: Duration, conntrack: bool) -> io::Result<NflogReader> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        if conntrack {
            socket.add_membership(conntrack::GROUP_NEW)?;
            socket.add_membership(conntrack::GROUP_DESTROY)?;
        }
        super::socket::set_recv_timeout(&socket, poll)?;
        // Large bursts (a scan) must not overflow the default buffer at once;
        // what overflows is counted by the kernel (ENOBUFS) and skipped here.
        socket.set_rx_buf_sz(4 << 20)?;
        let mut r = NflogReader {
            socket,
            buf: vec![0; 1 << 16],
        };
        for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
            r.configure(config_request(family, 0, vec![ConfigCmd::PfBind.into()]))?;
        }
        let flush: Timeout = Duration::from_millis(100).into();
        r.configure(config_request(
            NetfilterProtoFamily::IPv4,
            group,
            vec![
                ConfigCmd::Bind.into(),
                ConfigMode::new_packet(COPY_BYTES).into(),
                flush.into(),
            ],
        ))?;
        Ok(r)
    }

    fn configure(&mut self, msg: NetlinkMessage<NetfilterMessage>) -> io::Result<()> {
        let mut out = vec![0; msg.header.length as usize];
        msg.serialize(&mut out[..]);
        self.socket.send(&out, 0)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        match NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[..n]) {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::Error(e),
                ..
            }) => match e.code {
                None => Ok(()),
                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            },
            Ok(_) => Ok(()),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }

    /// The packets logged and connections tracked since the last call; empty
    /// when `poll` passed with none. Messages that are not ours (another
    /// prefix) are skipped.
    pub fn read(&mut self) -> io::Result<Vec<Seen>> {
        let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(vec![])
            }
            // The kernel dropped messages we were too slow for; go on.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < n {
            let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[offset..n])
            else {
                break;
            };
            let len = msg.header.length as usize;
            if let Some(o) = observed(&msg) {
                out.push(Seen::Logged(o));
            } else if let Some(c) = conntrack::parse(&msg, false) {
                out.push(Seen::Conn(c));
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
        Ok(out)
    }
}

fn observed(msg: &NetlinkMessage<NetfilterMessage>) -> Option<Observed> {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
        ..
    }) = &msg.payload
    else {
        return None;
    };
    let mut prefix = None;
    let mut payload = None;
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => prefix = p.to_str().ok(),
            PacketNla::Payload(p) => payload = Some(p.as_slice()),
            _ => {}
        }
    }
    let logged = flowlog::parse(prefix?)?;
    let h = packet::parse(payload?)?;
    Some(Observed {
        logged,
        src: h.src,
        dst: h.dst,
        proto: h.proto,
        src_port: h.src_port,
        dst_port: h.dst_port,
    })
}
