//! The listener `prh serve` accepts on: at most [`MAX_CONNECTIONS`] open connections (one more is
//! closed at once, so idle sockets cannot exhaust file descriptors or tasks), and a connection
//! must deliver its first request head within the header timeout (a slow-loris client that
//! trickles a header a byte at a time is closed instead of holding a connection forever; axum
//! sets no timer, so hyper's own header timeout never runs).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// A TCP listener with a connection cap and a first-header deadline.
pub struct Guarded {
    inner: TcpListener,
    open: Arc<Semaphore>,
    header_timeout: Duration,
}

impl Guarded {
    /// Wraps `inner`; each connection must send its first request head within `header_timeout`.
    pub fn new(inner: TcpListener, header_timeout: Duration) -> Self {
        Guarded {
            inner,
            open: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            header_timeout,
        }
    }
}

impl axum::serve::Listener for Guarded {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, std::net::SocketAddr) {
        loop {
            // axum's own accept: it retries after errors (EMFILE included).
            let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => {
                    return (
                        Conn {
                            io,
                            _permit: permit,
                            deadline: Some(Box::pin(tokio::time::sleep(self.header_timeout))),
                            tail: [0; 3],
                        },
                        addr,
                    );
                }
                // Over the cap: closed unanswered.
                Err(_) => drop(io),
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its place under the cap, and fails its reads once the first
/// request head is overdue.
pub struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first request head has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last 3 bytes read, to find a `\r\n\r\n` split across reads.
    tail: [u8; 3],
}

impl Conn {
    /// Whether `new` (following `tail`) completes a request head.
    fn head_done(&mut self, new: &[u8]) -> bool {
        let mut window: Vec<u8> = self.tail.to_vec();
        window.extend_from_slice(new);
        let done = window.windows(4).any(|w| w == b"\r\n\r\n");
        let n = window.len();
        self.tail.copy_from_slice(&window[n - 3..]);
        done
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within the header timeout",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && self.deadline.is_some()
        {
            let new = buf.filled()[before..].to_vec();
            if self.head_done(&new) {
                self.deadline = None;
            }
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
}
