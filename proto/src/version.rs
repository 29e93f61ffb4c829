//! Protocol versions on every gRPC call, so nodes and VENs of different
//! releases can run side by side during a rolling upgrade, and a pair that
//! cannot talk says which release it needs instead of failing on a decode.
//!
//! Every client stamps its requests with two headers: the protocol it speaks
//! ([`PROTOCOL`]) and the oldest it can still talk to ([`MIN_PROTOCOL`]).
//! Every server checks them ([`check`]): a caller too old for the server, or a
//! server too old for the caller, is refused with `FAILED_PRECONDITION` and a
//! message naming the version needed. A call with no header comes from
//! protocol 1, the releases before these headers: still served.
//!
//! Within one protocol, messages change only by adding fields (protobuf skips
//! unknown ones), and a new protocol number is taken when a change is one an
//! older peer would misread. Protocol 2 added the VEN's home region
//! (`PairResponse.region`), the node's pid and VEN resyncs in its status, and
//! Raft entries holding several writes (entry format 2, decision 0022).

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::framing::LastFrameEnds;

/// The protocol this release speaks.
pub const PROTOCOL: u32 = 2;
/// The oldest protocol this release still serves and calls.
pub const MIN_PROTOCOL: u32 = 1;
/// The header with the caller's protocol.
pub const PROTOCOL_HEADER: &str = "sc-protocol";
/// The header with the oldest protocol the caller can talk to.
pub const MIN_PROTOCOL_HEADER: &str = "sc-protocol-min";
/// What a call without headers speaks: the releases before them.
pub const UNSTAMPED: u32 = 1;

/// Stamps every request of a client with this release's protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp;

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let m = req.metadata_mut();
        m.insert(PROTOCOL_HEADER, MetadataValue::from(PROTOCOL));
        m.insert(MIN_PROTOCOL_HEADER, MetadataValue::from(MIN_PROTOCOL));
        Ok(req)
    }
}

/// A channel whose requests carry the protocol headers, and end on their
/// last frame (`crate::framing`): what every client of this release is built
/// on.
pub type Stamped = LastFrameEnds<InterceptedService<Channel, Stamp>>;

/// Wraps a channel so its requests carry the protocol headers.
pub fn stamped(channel: Channel) -> Stamped {
    LastFrameEnds::new(InterceptedService::new(channel, Stamp))
}

/// Whether a caller speaking `theirs` (and able to talk down to `their_min`)
/// and this release can talk; the error says what to upgrade.
pub fn negotiate(theirs: u32, their_min: u32) -> Result<(), String> {
    if theirs < MIN_PROTOCOL {
        return Err(format!(
            "the caller speaks protocol {theirs}; this node (protocol {PROTOCOL}) needs at least \
             {MIN_PROTOCOL}: upgrade the caller to a release that speaks {MIN_PROTOCOL} or later"
        ));
    }
    if their_min > PROTOCOL {
        return Err(format!(
            "the caller needs protocol {their_min} or later; this node speaks {PROTOCOL}: \
             upgrade this node first (members before VENs, docs/runbook.md)"
        ));
    }
    Ok(())
}

/// The server side: refuses a caller this release cannot talk to (see the
/// module comment), with `FAILED_PRECONDITION` and what to upgrade.
#[allow(clippy::result_large_err)]
pub fn check(req: Request<()>) -> Result<Request<()>, Status> {
    let read = |name: &str, absent: u32| -> Result<u32, Status> {
        match req.metadata().get(name) {
            None => Ok(absent),
            Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                Status::invalid_argument(format!("header {name} must be a protocol number"))
            }),
        }
    };
    let theirs = read(PROTOCOL_HEADER, UNSTAMPED)?;
    let their_min = read(MIN_PROTOCOL_HEADER, theirs.min(UNSTAMPED))?;
    negotiate(theirs, their_min).map_err(Status::failed_precondition)?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_before_and_the_one_after_are_served_and_others_are_told_what_to_upgrade() {
        assert!(negotiate(PROTOCOL, MIN_PROTOCOL).is_ok(), "this release");
        assert!(negotiate(UNSTAMPED, UNSTAMPED).is_ok(), "no headers");
        assert!(
            negotiate(PROTOCOL + 1, PROTOCOL).is_ok(),
            "a newer caller that talks down"
        );
        let too_old = negotiate(0, 0).unwrap_err();
        assert!(too_old.contains("needs at least 1"), "{too_old}");
        let too_new = negotiate(PROTOCOL + 2, PROTOCOL + 1).unwrap_err();
        assert!(too_new.contains("upgrade this node"), "{too_new}");
    }

    #[test]
    fn the_check_reads_the_headers_and_refuses_by_name() {
        assert!(check(Request::new(())).is_ok(), "unstamped = protocol 1");
        let stamped = tonic::service::Interceptor::call(&mut Stamp, Request::new(())).unwrap();
        assert!(check(stamped).is_ok());
        let mut old = Request::new(());
        old.metadata_mut()
            .insert(PROTOCOL_HEADER, MetadataValue::from(0u32));
        let st = check(old).unwrap_err();
        assert_eq!(st.code(), tonic::Code::FailedPrecondition);
        assert!(st.message().contains("protocol 0"), "{}", st.message());
        let mut junk = Request::new(());
        junk.metadata_mut()
            .insert(PROTOCOL_HEADER, MetadataValue::from_static("two"));
        assert_eq!(
            check(junk).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
