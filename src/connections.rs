//! Accepting connections, serving HTTP/1.1 and HTTP/2 on them, and cutting
//! them.
//!
//! sessiond runs hyper itself rather than through tonic's `Server`, which
//! wraps every call in its own `grpc-timeout` timer: that timer raced
//! sessiond's deadline guard and, when it won, answered CANCELLED instead of
//! DEADLINE_EXCEEDED. Here the guard alone enforces deadlines.
//!
//! Graceful shutdown lets in-flight calls finish, but each connection is
//! served on its own task and waited for without limit: a client that
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

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Duration, Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::reload::Live;

/// Hands out cuttable connections.
#[derive(Debug)]
pub struct Connections {
    cut: watch::Sender<bool>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Connections {
    /// No connections yet; at most `max` at once (TLS handshakes included).
    pub fn new(max: usize) -> Self {
        Self {
            cut: watch::channel(false).0,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }

    /// Wraps an accepted stream, to be closed after `idle` without input;
    /// it holds `slot` until it closes.
    pub fn track(&self, stream: Stream, idle: Duration, slot: OwnedSemaphorePermit) -> Conn {
        let mut cut = self.cut.subscribe();
        Conn {
            _slot: slot,
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

/// An accepted connection: plain TCP, or TLS over TCP.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection that fails once the server cuts its connections.
pub struct Conn {
    _slot: OwnedSemaphorePermit,
    inner: Stream,
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

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the receiving end of `tx` goes away. TLS
/// handshakes run concurrently, each bounded, so a slow client never holds
/// up the others; a failed handshake is logged at DEBUG and dropped.
pub async fn accept(
    listener: TcpListener,
    tls: Option<Live<TlsAcceptor>>,
    connections: std::sync::Arc<Connections>,
    idle: Duration,
    tx: mpsc::Sender<Conn>,
) {
    loop {
        // At the connection limit, stop accepting until one closes: new
        // clients wait in the kernel's backlog instead of costing memory.
        let Ok(slot) = connections.slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                if tx
                    .send(connections.track(Stream::Plain(tcp), idle, slot))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(acceptor) => {
                // The certificate in force now (a reload may have replaced it).
                let acceptor = TlsAcceptor::clone(&acceptor.get());
                let (tx, connections) = (tx.clone(), connections.clone());
                tokio::spawn(async move {
                    let remote = tcp.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = connections.track(Stream::Tls(Box::new(stream)), idle, slot);
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => tracing::debug!(?remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(?remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// HTTP/2 settings of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    /// Streams a client may have open on one connection.
    pub max_concurrent_streams: u32,
    /// Largest header block a client may send, in bytes.
    pub max_header_list_size: u32,
}

/// How long an HTTP/2 keep-alive ping may go unanswered (tonic's default).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves HTTP/1.1 and HTTP/2 with `service` on each connection from
/// `incoming` until `stop` resolves; then asks every connection to finish
/// (GOAWAY on HTTP/2) and resolves once all of them have closed.
pub async fn serve(
    mut incoming: mpsc::Receiver<Conn>,
    service: axum::Router,
    http2: Http2Settings,
    stop: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(http2.max_concurrent_streams)
        .max_header_list_size(http2.max_header_list_size);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let conn = tokio::select! {
            () = &mut stop => break,
            conn = incoming.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let served = builder
            .serve_connection(
                TokioIo::new(conn),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!("connection ended with an error: {e}");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}
