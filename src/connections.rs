//! Accepted connections that the server can cut.
//!
//! Graceful shutdown lets in-flight calls finish, but tonic serves each
//! connection on its own task and waits for it without limit: a client that
//! holds a stream open (a health `Watch`, say) would keep the server, its
//! store and the data directory's lock alive forever. Every accepted stream
//! is therefore wrapped in a [`Conn`] whose reads and writes fail once
//! [`Connections::cut_all`] is called at the end of the drain timeout, which
//! ends those tasks.
//!
//! A connection on which the client sends nothing for the idle timeout is
//! closed the same way (bytes the server sends do not count: a client that
//! stopped reading is idle too).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Hands out cuttable connections.
#[derive(Debug)]
pub struct Connections {
    cut: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Self::new()
    }
}

impl Connections {
    /// No connections yet.
    pub fn new() -> Self {
        Self {
            cut: watch::channel(false).0,
        }
    }

    /// Wraps an accepted stream, to be closed after `idle` without input.
    pub fn track(&self, stream: TcpStream, idle: Duration) -> Conn {
        let mut cut = self.cut.subscribe();
        Conn {
            inner: stream,
            cut: Some(Box::pin(async move {
                let _ = cut.wait_for(|cut| *cut).await;
            })),
            idle,
            idle_deadline: Box::pin(tokio::time::sleep(idle)),
            last_input: Instant::now(),
        }
    }

    /// Makes every tracked connection fail its next read or write.
    pub fn cut_all(&self) {
        self.cut.send_replace(true);
    }
}

type CutSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A TCP stream that fails once the server cuts its connections.
pub struct Conn {
    inner: TcpStream,
    /// `None` once the cut happened.
    cut: Option<CutSignal>,
    idle: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    /// When the deadline was last pushed back (at most once a second).
    last_input: Instant,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("cut", &self.cut.is_none())
            .finish()
    }
}

impl Conn {
    /// Registers the waker on the cut signal and the idle deadline; true
    /// once either ended the connection.
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if self.idle_deadline.as_mut().poll(cx).is_ready() {
            self.cut = None;
        }
        match &mut self.cut {
            None => true,
            Some(signal) => {
                if signal.as_mut().poll(cx).is_ready() {
                    self.cut = None;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn saw_input(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_input) >= Duration::from_secs(1) {
            self.last_input = now;
            self.idle_deadline.as_mut().reset(now + self.idle);
        }
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was idle too long, or outlived the server's drain timeout",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.saw_input();
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
