//! The listener `prh serve` accepts on: at most [`MAX_CONNECTIONS`] open connections, and a
//! connection must deliver each request head within the header timeout — the first one after it
//! opens, the next one after the last answer (a slow-loris client that trickles a header a byte
//! at a time, or an idle keep-alive connection, is closed instead of holding a place forever;
//! axum sets no timer, so hyper's own header timeout never runs). When every place is taken, the
//! connection that has waited longest for a request head is closed to make room, so a flood of
//! idle connections cannot keep a real client out.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a new connection waits for the place of the idle one closed for it.
const MAKE_ROOM: Duration = Duration::from_millis(500);

/// A TCP listener with a connection cap and request-head deadlines.
pub struct Guarded {
    inner: TcpListener,
    open: Arc<Semaphore>,
    header_timeout: Duration,
    /// Connections waiting for a request head, oldest first (stale entries are skipped).
    idle: Arc<Mutex<VecDeque<Arc<Idle>>>>,
}

/// A connection's waiting state, shared with the listener.
#[derive(Default)]
struct Idle {
    /// Waiting for a request head (and so may be closed to make room).
    waiting: AtomicBool,
    /// Closed by the listener to make room.
    evicted: AtomicBool,
    /// Wakes the connection's reader to see `evicted`.
    waker: Mutex<Option<Waker>>,
}

impl Guarded {
    /// Closes the connection that has waited longest for a request head; whether there was one.
    fn evict_oldest(&self) -> bool {
        let mut q = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = q.pop_front() {
            if c.waiting.swap(false, Ordering::AcqRel) {
                c.evicted.store(true, Ordering::Release);
                if let Some(w) = c.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    w.wake();
                }
                return true;
            }
        }
        false
    }

    /// Wraps `inner`; each connection must send its first request head within `header_timeout`.
    pub fn new(inner: TcpListener, header_timeout: Duration) -> Self {
        Guarded {
            inner,
            open: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            header_timeout,
            idle: Arc::default(),
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
            let permit = match self.open.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                // Every place taken: the longest-idle connection makes room, if there is one.
                Err(_) if self.evict_oldest() => {
                    tokio::time::timeout(MAKE_ROOM, self.open.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(|p| p.ok())
                }
                Err(_) => None,
            };
            // Without a place: closed unanswered.
            let Some(permit) = permit else {
                drop(io);
                continue;
            };
            let mut conn = Conn {
                io,
                _permit: permit,
                header_timeout: self.header_timeout,
                deadline: None,
                tail: [0; 3],
                idle: Arc::default(),
                queue: self.idle.clone(),
            };
            conn.await_head();
            return (conn, addr);
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its place under the cap, and fails its reads once a request
/// head is overdue or the listener closed it to make room.
pub struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    header_timeout: Duration,
    /// While a request head is awaited: when it is overdue.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last 3 bytes read, to find a `\r\n\r\n` split across reads.
    tail: [u8; 3],
    idle: Arc<Idle>,
    queue: Arc<Mutex<VecDeque<Arc<Idle>>>>,
}

impl Conn {
    /// Waits for a request head from now on: a deadline, and a place in the listener's queue.
    fn await_head(&mut self) {
        self.deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
        self.tail = [0; 3];
        self.idle.waiting.store(true, Ordering::Release);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // Entries of connections no longer waiting are dropped now and then.
        if q.len() >= 2 * MAX_CONNECTIONS {
            q.retain(|c| c.waiting.load(Ordering::Acquire));
        }
        q.push_back(self.idle.clone());
    }

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

impl Drop for Conn {
    fn drop(&mut self) {
        self.idle.waiting.store(false, Ordering::Release);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "closed while idle to make room for a new connection",
            )));
        }
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request head within the header timeout",
                )));
            }
            *self.idle.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && self.deadline.is_some()
        {
            let new = buf.filled()[before..].to_vec();
            if self.head_done(&new) {
                self.deadline = None;
                self.idle.waiting.store(false, Ordering::Release);
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

    /// An answer has gone out: the next request head is awaited from now on.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r
            && self.deadline.is_none()
        {
            self.await_head();
        }
        r
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
