//! A request body that knows it has ended as it yields its last frame.
//!
//! tonic encodes a unary request as a stream of one message, which learns
//! that it has ended only when it is polled again. hyper sends each data
//! frame with END_STREAM set when the body says, right after the frame,
//! that it has ended; otherwise it sends the frame, polls again, and
//! sends an empty frame to end the stream. Each of those goes out in its
//! own `writev` (hyper's connection task flushes between them): a unary
//! call from this client cost three writes (HEADERS, DATA, an empty DATA
//! with END_STREAM), measured with `strace -e writev` on `broker-bench`.
//! [`Lookahead`] polls the body once more as it yields a frame, so the
//! last one carries END_STREAM: two writes a call, and one frame less for
//! the server to read.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// A body that holds the frame after the one it yields, when that one is
/// ready at once (for a streaming call it usually is not, and nothing
/// waits for it).
pub struct Lookahead {
    inner: Body,
    next: Option<Result<Frame<Bytes>, Status>>,
    ended: bool,
}

impl Lookahead {
    /// `inner`, looking one frame ahead.
    pub fn wrap(inner: Body) -> Body {
        Body::new(Lookahead {
            inner,
            next: None,
            ended: false,
        })
    }
}

impl http_body::Body for Lookahead {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = match this.next.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        if frame.is_ok() {
            // Pending registers this task's waker with the body, as the
            // caller's next poll would.
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(next)) => this.next = Some(next),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.next {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use http_body::Body as _;

    fn frames(body: &mut Body) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(Some(frame)) = Pin::new(&mut *body).poll_frame(&mut cx) {
            let data = frame.unwrap().into_data().unwrap();
            out.push((data.to_vec(), body.is_end_stream()));
        }
        out
    }

    fn stream_body(chunks: Vec<&'static [u8]>) -> Body {
        let stream = futures::stream::iter(chunks)
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from_static(c))));
        Body::new(http_body_util::StreamBody::new(stream))
    }

    #[test]
    fn the_last_frame_says_the_body_has_ended() {
        // Without the lookahead, the body says so only after another poll.
        let mut plain = stream_body(vec![b"one", b"two"]);
        assert_eq!(
            frames(&mut plain),
            vec![(b"one".to_vec(), false), (b"two".to_vec(), false)]
        );
        let mut body = Lookahead::wrap(stream_body(vec![b"one", b"two"]));
        assert_eq!(
            frames(&mut body),
            vec![(b"one".to_vec(), false), (b"two".to_vec(), true)]
        );
    }

    #[test]
    fn a_body_that_is_not_ready_is_not_waited_for() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from_static(c))));
        let mut body = Lookahead::wrap(Body::new(http_body_util::StreamBody::new(stream)));
        tx.send(b"one").unwrap();
        assert_eq!(frames(&mut body), vec![(b"one".to_vec(), false)]);
        tx.send(b"two").unwrap();
        tx.send(b"three").unwrap();
        assert_eq!(
            frames(&mut body),
            vec![(b"two".to_vec(), false), (b"three".to_vec(), false)]
        );
        drop(tx);
        assert_eq!(frames(&mut body), vec![]);
        assert!(body.is_end_stream());
    }
}
