//! A TCP stream the server can cut off, or wind down, from elsewhere.
//!
//! socketioxide's `disconnect()` only takes a socket out of its namespace:
//! the Engine.IO connection stays open, and the call is refused outright
//! while the socket's outgoing buffer is full. To really cut off a flooder
//! or a reader that stopped reading, every connection has a [`ConnectionSwitch`], and
//! every Socket.IO request carries a [`CutOff`] (a request extension; the
//! engine keeps the handshake request's for the session's whole life).
//! Cutting it off makes the session's connection fail, the engine closes the
//! socket, and its departure is handled as any other.
//!
//! A session that starts with long-polling and then upgrades lives on a
//! second connection, its WebSocket: the request router records that connection
//! in the session's [`CutOff`] ([`CutOff::upgraded_to`]), so that it is the one
//! cut off.
//!
//! At shutdown a WebSocket is wound down rather than cut off
//! ([`CutOff::finish`]): once what was queued for it (the Socket.IO
//! disconnect) has been written, its connection is closed gracefully: a FIN
//! after the last byte, and what the peer still sends is read and dropped
//! for a moment, so that closing never resets the connection (a reset can
//! discard bytes not yet delivered).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A connection being wound down has written everything queued for it once
/// it wrote after the wind-down began and then nothing for this long.
const WRITES_SETTLED: Duration = Duration::from_millis(50);
/// How long a wind-down waits for those writes at most (a peer that stopped
/// reading never takes them).
const WRITES_PATIENCE: Duration = Duration::from_millis(800);
/// How long a closed connection reads what its peer still sends.
const LINGER: Duration = Duration::from_millis(500);

/// The clock of [`ConnectionState::last_write`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_micros() as u64
}

/// The switch of one TCP connection.
#[derive(Clone, Default)]
pub struct ConnectionSwitch(Arc<ConnectionState>);

#[derive(Default)]
struct ConnectionState {
    /// Every later read and write fails.
    killed: AtomicBool,
    /// Closed gracefully once dropped (see [`linger`]).
    finishing: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// When bytes were last written, in µs since [`EPOCH`].
    last_write: AtomicU64,
    /// Cancelled once the connection is closed.
    closed: CancellationToken,
}

impl ConnectionSwitch {
    fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.reader.wake();
        self.0.writer.wake();
    }

    fn check(&self, waker: &AtomicWaker, cx: &Context<'_>) -> io::Result<()> {
        waker.register(cx.waker());
        if self.0.killed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut off by the server",
            ));
        }
        Ok(())
    }

    fn wrote(&self) {
        self.0
            .last_write
            .store(micros_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    /// Whether bytes were written after `since` and none for [`WRITES_SETTLED`].
    fn writes_settled(&self, since: Instant) -> bool {
        let last = self.0.last_write.load(Ordering::Relaxed);
        let now = micros_since_epoch(Instant::now());
        last >= micros_since_epoch(since) && now.saturating_sub(last) >= WRITES_SETTLED.as_micros() as u64
    }
}

/// A Socket.IO session's hold on its connection: the one the request came
/// on and, once the session upgraded from polling, its WebSocket's.
#[derive(Clone)]
pub struct CutOff {
    conn: ConnectionSwitch,
    upgraded: Arc<OnceLock<ConnectionSwitch>>,
}

impl CutOff {
    /// The hold of a request that came on `conn`.
    pub fn new(conn: &ConnectionSwitch) -> Self {
        Self {
            conn: conn.clone(),
            upgraded: Arc::default(),
        }
    }

    /// The connection the session uses now.
    fn current(&self) -> &ConnectionSwitch {
        self.upgraded.get().unwrap_or(&self.conn)
    }

    /// Makes every later read and write of the session's connection fail.
    pub fn cut(&self) {
        self.current().kill();
    }

    /// Records that the session moved to the connection of `upgrade`, a
    /// WebSocket upgrade request of the same session. Only the first is
    /// kept: the engine refuses a second WebSocket for a session.
    pub fn upgraded_to(&self, upgrade: &CutOff) {
        let _ = self.upgraded.set(upgrade.conn.clone());
    }

    /// Winds down a WebSocket session whose last packets were queued after
    /// `queued_since`: waits until they are written (at most
    /// [`WRITES_PATIENCE`]), then closes the connection gracefully.
    /// Resolves once it is closed.
    pub fn finish(&self, queued_since: Instant) -> impl Future<Output = ()> + Send + 'static {
        let conn = self.current().clone();
        async move {
            let deadline = tokio::time::Instant::now() + WRITES_PATIENCE;
            while !conn.writes_settled(queued_since) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(WRITES_SETTLED / 5).await;
            }
            conn.0.finishing.store(true, Ordering::Release);
            // The engine sees the failure and ends the session; the stream
            // is dropped, and closed gracefully.
            conn.kill();
            conn.0.closed.cancelled().await;
        }
    }
}

/// A [`TcpStream`] with a [`ConnectionSwitch`].
pub struct CuttableStream {
    /// Taken only when dropped.
    inner: Option<TcpStream>,
    switch: ConnectionSwitch,
}

impl CuttableStream {
    pub fn new(inner: TcpStream) -> (Self, ConnectionSwitch) {
        let switch = ConnectionSwitch::default();
        (
            Self {
                inner: Some(inner),
                switch: switch.clone(),
            },
            switch,
        )
    }

    fn inner(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.inner.as_mut().expect("taken only when dropped"))
    }
}

impl Drop for CuttableStream {
    fn drop(&mut self) {
        let stream = self.inner.take();
        let runtime = tokio::runtime::Handle::try_current();
        match (stream, runtime) {
            (Some(stream), Ok(runtime)) if self.switch.0.finishing.load(Ordering::Acquire) => {
                runtime.spawn(linger(stream, self.switch.clone()));
            }
            _ => self.switch.0.closed.cancel(),
        }
    }
}

/// Closes `stream` without a reset: a FIN after the bytes already written,
/// then what the peer still sends is read and dropped until it closes too,
/// for at most [`LINGER`].
async fn linger(mut stream: TcpStream, switch: ConnectionSwitch) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    switch.0.closed.cancel();
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.switch.check(&self.switch.0.reader, cx) {
            return Poll::Ready(Err(e));
        }
        self.inner().poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.switch.check(&self.switch.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        let written = self.inner().poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.switch.wrote();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.switch.check(&self.switch.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.switch.check(&self.switch.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        let written = self.inner().poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.switch.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}
