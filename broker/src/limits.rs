//! Limits that keep one client from exhausting the broker (see
//! [`crate::config::Limits`]):
//!
//! - Connections: [`limit_connections`] wraps the listener's stream of
//!   accepted connections. It takes a permit of a semaphore *before* it
//!   accepts, and the permit lives in the connection's IO ([`LimitedIo`])
//!   until the connection is dropped (closed by either side, or after a
//!   failed TLS handshake). At the limit the broker stops accepting: new
//!   connections wait in the kernel's accept queue (and, when that is full,
//!   are refused by the kernel) until a connection closes. They are not
//!   closed by the broker.
//! - Streams: [`Streams`] counts open `StreamMessages` and `SendStream` streams over all
//!   connections; one more fails at once with RESOURCE_EXHAUSTED.
//! - Long polls: [`LongPolls`] counts the receives that may wait, per
//!   connection (keyed by the peer's address, which is unique per open TCP
//!   connection); one more fails with RESOURCE_EXHAUSTED. A receive counts
//!   when its wait time is above 0: its `wait_time_seconds`, or without one
//!   its queue's `receive_wait_time_seconds`. It counts for as long as it
//!   runs, so a receive that returns at once holds its slot only for that
//!   moment.
//! - Request size: `max_request_bytes` is the services'
//!   `max_decoding_message_size` (set in `server.rs`): tonic checks a
//!   message's length prefix before it buffers or decodes the message, and
//!   fails an oversize one with OUT_OF_RANGE; the server turns that
//!   answer into RESOURCE_EXHAUSTED naming `max_request_bytes`, the code the
//!   other limits use (`service::status::oversize_as_resource_exhausted`).
//!
//! Every slot is released by a drop (of the IO, the stream task, the
//! receive's future), so a client that goes away mid-call cannot leak one.
//!
//! A limit that refuses a call is a [`LimitError`], RESOURCE_EXHAUSTED
//! through the status table (`service::status`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// A call refused because a limit of the broker is reached; each names its
/// setting and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "at most max_streams = {max_streams} streams may be open at once; close one, or use the unary RPCs"
    )]
    TooManyStreams { max_streams: usize },
    #[error(
        "at most max_long_polls_per_connection = {max_long_polls_per_connection} receives may wait at once on one connection; use another connection, or wait_time_seconds = 0"
    )]
    TooManyLongPolls {
        max_long_polls_per_connection: usize,
    },
    #[error("the request is larger than max_request_bytes = {max_request_bytes} bytes")]
    RequestTooLarge { max_request_bytes: usize },
}

/// Accepts from `incoming` only while fewer than `max` of its connections
/// are open (at least 1).
pub fn limit_connections<S, IO, E>(
    incoming: S,
    max: usize,
) -> impl Stream<Item = Result<LimitedIo<IO>, E>> + Send
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Send,
    E: Send,
{
    let slots = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
    futures::stream::unfold(
        (Box::pin(incoming), slots),
        |(mut incoming, slots)| async move {
            // Never closed, so `acquire_owned` cannot fail; end the stream
            // if it somehow did rather than accept without a slot.
            let slot = slots.clone().acquire_owned().await.ok()?;
            let accepted = incoming.next().await?;
            let item = accepted.map(|io| LimitedIo { io, _slot: slot });
            Some((item, (incoming, slots)))
        },
    )
}

/// An accepted connection holding one of the connection slots.
#[derive(Debug)]
pub struct LimitedIo<IO> {
    io: IO,
    /// Released when the connection is dropped.
    _slot: OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for LimitedIo<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LimitedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LimitedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The open `StreamMessages` and `SendStream` streams, over all connections.
#[derive(Debug, Clone)]
pub struct Streams {
    max: usize,
    slots: Arc<Semaphore>,
}

impl Streams {
    pub fn new(max: usize) -> Streams {
        Streams {
            max,
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A slot for one more stream, held until dropped;
    /// [`LimitError::TooManyStreams`] when `max_streams` are open.
    pub fn open(&self) -> Result<OwnedSemaphorePermit, LimitError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::TooManyStreams {
                max_streams: self.max,
            })
    }
}

/// The receives that may wait (long polls), per connection.
#[derive(Debug, Clone)]
pub struct LongPolls {
    max: usize,
    /// Waiting receives by the connection's peer address; an address is
    /// removed when its count drops to 0, so the map holds only
    /// connections with a receive under way.
    waiting: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

/// One long poll's slot; released when dropped.
#[derive(Debug)]
pub struct LongPoll {
    polls: LongPolls,
    peer: SocketAddr,
}

impl LongPolls {
    pub fn new(max: usize) -> LongPolls {
        LongPolls {
            max,
            waiting: Arc::default(),
        }
    }

    /// A slot for one more long poll on the connection from `peer`;
    /// [`LimitError::TooManyLongPolls`] when it has
    /// `max_long_polls_per_connection`. Without a peer address (not a TCP
    /// connection) nothing is counted.
    pub fn start(&self, peer: Option<SocketAddr>) -> Result<Option<LongPoll>, LimitError> {
        let Some(peer) = peer else {
            return Ok(None);
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let count = waiting.entry(peer).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                waiting.remove(&peer);
            }
            return Err(LimitError::TooManyLongPolls {
                max_long_polls_per_connection: self.max,
            });
        }
        *count += 1;
        Ok(Some(LongPoll {
            polls: self.clone(),
            peer,
        }))
    }

    /// Long polls under way on the connection from `peer`.
    pub fn waiting(&self, peer: SocketAddr) -> usize {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.get(&peer).copied().unwrap_or(0)
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        let mut waiting = self.polls.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = waiting.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_are_counted_per_connection_and_released_on_drop() {
        let polls = LongPolls::new(2);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let first = polls.start(Some(a)).unwrap();
        let _second = polls.start(Some(a)).unwrap();
        let e = polls.start(Some(a)).unwrap_err();
        assert_eq!(
            e,
            LimitError::TooManyLongPolls {
                max_long_polls_per_connection: 2
            }
        );
        assert!(
            e.to_string().contains("max_long_polls_per_connection = 2"),
            "{e}"
        );
        // Another connection has its own count.
        let _other = polls.start(Some(b)).unwrap();
        drop(first);
        assert_eq!(polls.waiting(a), 1);
        let _third = polls.start(Some(a)).unwrap();
        assert!(polls.start(None).unwrap().is_none());
    }

    #[test]
    fn finished_connections_leave_no_entry() {
        let polls = LongPolls::new(1);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        drop(polls.start(Some(a)).unwrap());
        assert!(polls.waiting.lock().unwrap().is_empty());
        let none = LongPolls::new(0);
        none.start(Some(a)).unwrap_err();
        assert!(none.waiting.lock().unwrap().is_empty());
    }

    #[test]
    fn streams_beyond_the_limit_are_refused() {
        let streams = Streams::new(1);
        let slot = streams.open().unwrap();
        let e = streams.open().unwrap_err();
        assert_eq!(e, LimitError::TooManyStreams { max_streams: 1 });
        assert!(
            e.to_string()
                .contains("at most max_streams = 1 streams may be open at once"),
            "{e}"
        );
        drop(slot);
        drop(streams.open().unwrap());
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let items = futures::stream::iter((0..3).map(Ok::<_, io::Error>));
        let mut limited = Box::pin(limit_connections(items, 2));
        let first = limited.next().await.unwrap().unwrap();
        let _second = limited.next().await.unwrap().unwrap();
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), limited.next());
        assert!(third.await.is_err(), "a third connection must wait");
        drop(first);
        let third = limited.next().await.unwrap().unwrap();
        assert_eq!(third.io, 2);
    }
}
