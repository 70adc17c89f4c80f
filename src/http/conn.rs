//! One TCP connection as the server holds it: a stream that can be cut off
//! or wound down from elsewhere ([`CuttableStream`]), and its handle
//! ([`ConnectionSwitch`]), which also keeps what the connection is counted
//! by and for:
//!
//! - its place in the per-address connection count ([`AddressSlot`]),
//!   given back when the TCP connection closes, whether it ended as HTTP or,
//!   after an upgrade, as a WebSocket (the stream is dropped then, and only
//!   then);
//! - its requests in flight and when one last started or ended, from which
//!   the accept loop tells an idle connection (`super::serve`);
//! - a request to close it once its answers are written (a client over its
//!   connection cap, a body cut for slowness);
//! - once it became a session's WebSocket, that session's [`Outbox`], which
//!   every byte written on it is credited to.
//!
//! A wound-down connection (see [`super::cutoff::CutOff::finish`]) is closed
//! gracefully: a FIN after the last byte, and what the peer still sends is
//! read and dropped for a moment, so that closing never resets the
//! connection (a reset can discard bytes not yet delivered).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use crate::limits::{ip_key, AddressSlot, IpCounter};

/// How long a closed connection reads what its peer still sends.
const LINGER: Duration = Duration::from_millis(500);

/// The clock of the connection's timestamps (µs since the first use).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_micros() as u64
}

fn instant_at(micros: u64) -> Instant {
    *EPOCH + Duration::from_micros(micros)
}

/// The switch of one TCP connection; cheap to clone.
#[derive(Clone)]
pub struct ConnectionSwitch(Arc<ConnectionState>);

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
    /// Requests whose answer hyper has not finished with.
    in_flight: AtomicU32,
    /// When a request last started or ended (or the connection opened), in
    /// µs since [`EPOCH`].
    last_request: AtomicU64,
    /// Asked to close once the answers in flight are written.
    close: Notify,
    /// The session whose WebSocket this connection became.
    outbox: OnceLock<Arc<Outbox>>,
    /// Its place in the per-address connection count; taken (given back)
    /// when the stream is dropped.
    slot: Mutex<Option<AddressSlot>>,
}

impl ConnectionSwitch {
    fn new(slot: Option<AddressSlot>) -> Self {
        Self(Arc::new(ConnectionState {
            killed: AtomicBool::new(false),
            finishing: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            last_write: AtomicU64::new(0),
            closed: CancellationToken::new(),
            in_flight: AtomicU32::new(0),
            last_request: AtomicU64::new(micros_since_epoch(Instant::now())),
            close: Notify::new(),
            outbox: OnceLock::new(),
            slot: Mutex::new(slot),
        }))
    }

    /// Makes every later read and write fail, and wakes whoever waits on one.
    pub(super) fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.reader.wake();
        self.0.writer.wake();
    }

    /// Kills the connection so that it is closed gracefully once dropped.
    pub(super) fn kill_gracefully(&self) {
        self.0.finishing.store(true, Ordering::Release);
        self.kill();
    }

    /// Resolves once the connection is closed.
    pub(super) async fn closed(&self) {
        self.0.closed.cancelled().await;
    }

    pub(super) fn is_closed(&self) -> bool {
        self.0.closed.is_cancelled()
    }

    pub(super) fn same_as(&self, other: &ConnectionSwitch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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

    fn wrote(&self, n: usize) {
        self.0
            .last_write
            .store(micros_since_epoch(Instant::now()), Ordering::Relaxed);
        if let Some(outbox) = self.0.outbox.get() {
            outbox.written(n);
        }
    }

    /// Whether bytes were written after `since` and none for `settled`.
    pub(super) fn writes_settled(&self, since: Instant, settled: Duration) -> bool {
        let last = self.0.last_write.load(Ordering::Relaxed);
        let now = micros_since_epoch(Instant::now());
        last >= micros_since_epoch(since) && now.saturating_sub(last) >= settled.as_micros() as u64
    }

    /// From now on, bytes written on this connection are credited to `outbox`
    /// (it became that session's WebSocket). A connection carries one
    /// WebSocket at most, so the first session stays.
    pub(super) fn carries(&self, outbox: &Arc<Outbox>) {
        let _ = self.0.outbox.set(outbox.clone());
    }

    /// Counts the connection against `ip`'s address (behind a proxy, where
    /// the address is known only from a request), unless it already is.
    /// `false` when that address has `max` connections already; the
    /// connection then stays counted as it was.
    pub(super) fn count_against(&self, ip: std::net::IpAddr, counter: &Arc<IpCounter>, max: usize) -> bool {
        let mut slot = self.0.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|s| s.key() == ip_key(ip)) {
            return true;
        }
        match counter.try_slot(ip, max) {
            Some(new) => {
                *slot = Some(new);
                true
            }
            None => false,
        }
    }

    /// A request started on this connection; it is in flight until the
    /// returned guard is dropped (with the answer's body).
    pub(super) fn request_started(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        self.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn touch(&self) {
        self.0
            .last_request
            .store(micros_since_epoch(Instant::now()), Ordering::Release);
    }

    /// When the connection will have been idle for `idle` (no request in
    /// flight, none started or ended), if nothing happens meanwhile; `None`
    /// once it has been. While a request is in flight, a full `idle` from now.
    pub(super) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.0.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + idle);
        }
        let at = instant_at(self.0.last_request.load(Ordering::Acquire)) + idle;
        (at > now).then_some(at)
    }

    /// Asks the connection to close once the answers in flight are written.
    pub(super) fn request_close(&self) {
        self.0.close.notify_one();
    }

    /// Resolves once [`ConnectionSwitch::request_close`] was called.
    pub(super) async fn close_requested(&self) {
        self.0.close.notified().await;
    }
}

/// A request in flight on a connection (see [`ConnectionSwitch::request_started`]).
pub struct InFlight(ConnectionSwitch);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A [`TcpStream`] with a [`ConnectionSwitch`].
pub struct CuttableStream {
    /// Taken only when dropped.
    inner: Option<TcpStream>,
    switch: ConnectionSwitch,
}

impl CuttableStream {
    /// The stream of a new connection, counted in `slot` (if counted yet).
    pub fn new(inner: TcpStream, slot: Option<AddressSlot>) -> (Self, ConnectionSwitch) {
        let switch = ConnectionSwitch::new(slot);
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

    /// Passes a write's outcome on, after crediting the bytes it wrote.
    fn credit(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                self.switch.wrote(n);
            }
        }
        written
    }
}

impl Drop for CuttableStream {
    fn drop(&mut self) {
        // The TCP connection ends here: its address may open another.
        let slot = self
            .switch
            .0
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(slot);
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
        let before = buf.filled().len();
        let read = self.inner().poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(outbox) = self.switch.0.outbox.get() {
                outbox.heard_from_client();
            }
        }
        read
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.switch.check(&self.switch.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        let written = self.inner().poll_write(cx, buf);
        self.credit(written)
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
        self.credit(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}
