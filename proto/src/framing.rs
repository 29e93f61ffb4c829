//! How a client's request is laid into HTTP/2 frames, so that a request of
//! 256 bytes or more does not cost a second socket write.
//!
//! h2 (under tonic and hyper) copies a DATA frame's payload into its write
//! buffer only when it is shorter than 256 bytes. A longer one is kept aside
//! for a vectored write, and the frame after it is encoded only once that
//! write is done: a second socket write. For a unary call the frame after the
//! message is an empty DATA frame that ends the request, sent because the
//! body only says it has ended when it is asked for the next frame. A tonic
//! server runs a unary call only once the request has ended, so it cannot
//! start before that second write has arrived; every write of a 256-byte
//! value through `Federation.Write` paid it, on the client and on the node.
//!
//! [`LastFrameEnds`] wraps a client's channel. When a request body has given
//! a frame, it looks whether the body is over, so hyper marks that DATA frame
//! as the end of the stream and sends nothing after it: one frame, whatever
//! its size. A body with more to give (a stream of messages) gives it as
//! before, and its last message ends the stream in the same way.
//!
//! The same holds for a server's reply: a reply of 256 bytes or more is
//! written, then its trailers are written. Cutting such replies into frames
//! under 256 bytes saved that write and 15 % of a follower's CPU per read, but
//! with 64 readers it cost 5 % of their throughput (the replies waited to be
//! gathered into bigger writes), and one reader gained nothing: both writes
//! leave in the same turn of the connection's task, so the caller gets them
//! together. Not kept (`docs/benchmarks.md`, "One frame per request").

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::Request;
use tonic::codegen::{Bytes, Service};

/// A request body that says it has ended as soon as its last frame is out,
/// so hyper sets END_STREAM on that frame instead of sending an empty one.
pub struct EndsWithLastFrame<B> {
    inner: B,
    /// A frame (or error) read ahead of its turn while looking for the end.
    ahead: Option<Result<Frame<Bytes>, tonic::Status>>,
    /// The inner body has ended.
    done: bool,
}

impl<B> EndsWithLastFrame<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        EndsWithLastFrame {
            inner,
            ahead: None,
            done: false,
        }
    }
}

impl<B> Body for EndsWithLastFrame<B>
where
    B: Body<Data = Bytes, Error = tonic::Status> + Unpin,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The frame read ahead last time comes first; it gets the same look
        // for the end as a fresh one, so a stream of messages ends on its
        // last message too.
        let frame = match self.ahead.take() {
            Some(frame) => frame,
            None if self.done => return Poll::Ready(None),
            None => match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(frame)) => frame,
            },
        };
        // A message is out: if the body has nothing more ready, say so now.
        // If it is not ready yet, the waker is registered and hyper asks
        // again; the frame goes out without END_STREAM, as it would have.
        if !self.done && matches!(&frame, Ok(f) if f.is_data()) {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(next)) => self.ahead = Some(next),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.ahead.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// A client service whose request bodies end on their last frame (see the
/// module comment): the channel every client of this release calls through.
#[derive(Debug, Clone)]
pub struct LastFrameEnds<S> {
    inner: S,
}

impl<S> LastFrameEnds<S> {
    /// Wraps a client's channel (or a service over one).
    pub fn new(inner: S) -> Self {
        LastFrameEnds { inner }
    }
}

impl<S> Service<Request<tonic::body::Body>> for LastFrameEnds<S>
where
    S: Service<Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        self.inner
            .call(req.map(|body| tonic::body::Body::new(EndsWithLastFrame::new(body))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of given frames, all ready at once, as tonic's are for a
    /// unary call.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = tonic::Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn poll<B: Body + Unpin>(body: &mut B) -> Option<Frame<B::Data>>
    where
        B::Error: std::fmt::Debug,
    {
        let waker = std::task::Waker::noop();
        match Pin::new(body).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(f) => f.map(|f| f.expect("frame")),
            Poll::Pending => panic!("the test bodies are always ready"),
        }
    }

    fn data(len: usize) -> Frame<Bytes> {
        Frame::data(Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>()))
    }

    #[test]
    fn a_request_ends_on_its_message() {
        let mut body = EndsWithLastFrame::new(Frames([data(300)].into()));
        assert!(!body.is_end_stream());
        let first = poll(&mut body).expect("the message");
        assert_eq!(first.data_ref().map(|d| d.len()), Some(300));
        // hyper reads this right after the frame to set END_STREAM on it.
        assert!(body.is_end_stream());
        assert!(poll(&mut body).is_none());
    }

    #[test]
    fn a_request_of_several_frames_keeps_them_all_in_order() {
        let mut trailers = tonic::codegen::http::HeaderMap::new();
        trailers.insert("x-last", "1".parse().expect("header value"));
        let frames = [data(10), data(20), Frame::trailers(trailers)];
        let mut body = EndsWithLastFrame::new(Frames(frames.into()));
        assert_eq!(
            poll(&mut body)
                .and_then(|f| f.into_data().ok())
                .map(|d| d.len()),
            Some(10)
        );
        assert!(!body.is_end_stream());
        assert_eq!(
            poll(&mut body)
                .and_then(|f| f.into_data().ok())
                .map(|d| d.len()),
            Some(20)
        );
        assert!(!body.is_end_stream(), "trailers are still to come");
        let last = poll(&mut body).expect("the trailers");
        assert!(last.is_trailers());
        assert!(poll(&mut body).is_none());
        assert!(body.is_end_stream());
    }

    #[test]
    fn a_stream_of_messages_ends_on_its_last_message() {
        let mut body = EndsWithLastFrame::new(Frames([data(10), data(20), data(30)].into()));
        for len in [10, 20] {
            let frame = poll(&mut body).and_then(|f| f.into_data().ok());
            assert_eq!(frame.map(|d| d.len()), Some(len));
            assert!(!body.is_end_stream(), "more messages follow");
        }
        // The last message was read ahead; handing it out looks for the end.
        let last = poll(&mut body).and_then(|f| f.into_data().ok());
        assert_eq!(last.map(|d| d.len()), Some(30));
        assert!(
            body.is_end_stream(),
            "no empty frame after the last message"
        );
        assert!(poll(&mut body).is_none());
    }
}
