//! systemd's readiness protocol (`sd_notify`): a `Type=notify` unit counts
//! the service as started only once it sends `READY=1`, so `systemctl start`
//! returns when the node really serves (and units ordered after it start
//! then), and `STOPPING=1` tells systemd a clean stop is under way. Outside
//! systemd (no `NOTIFY_SOCKET`) nothing is sent. One datagram on a Unix
//! socket: no library needed.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (lines such as `READY=1`, `STATUS=...`) to systemd, if it
/// asked for it. A failure is logged, never fatal: the service runs anyway,
/// and systemd reports the missing notification itself.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_bytes();
        // A leading '@' names a socket in the abstract namespace.
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                let addr = SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = ?path, "could not notify systemd");
    }
}
