//! Bodies the request router wraps around what passes through it:
//!
//! - [`PacedBody`]: a `/socket.io/` request body that must keep arriving at
//!   a minimum rate, or fails (a trickled POST otherwise holds its
//!   connection, and its partial message, for as long as the client likes);
//! - [`Credited`]: a polling answer whose bytes are credited to the
//!   session's [`Outbox`] as hyper takes them;
//! - [`Tracked`]: any answer, holding its request's [`InFlight`] mark until
//!   hyper has finished with it (the idle clock of `super::serve`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::conn::InFlight;
use super::outbox::Outbox;

/// The largest piece of a polling answer handed to hyper at once. The
/// engine hands over a whole answer (up to `MAX_PAYLOAD_BYTES`) in one
/// piece; cut up, hyper takes the next piece only when its HTTP/1 write
/// buffer has room (about 400 KiB) or, over HTTP/2, when the stream has
/// window, so crediting a piece as hyper takes it runs ahead of what was
/// written by that buffer and one piece, not by the whole answer.
const CREDIT_CHUNK: usize = 64 * 1024;

/// The minimum rate a request body must keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes that must arrive in every window (0: no minimum).
    pub bytes_per_window: u64,
    pub window: Duration,
}

impl MinRate {
    /// `bytes_per_sec` over windows of `window` (the first is the grace period).
    pub fn new(bytes_per_sec: u64, window: Duration) -> Self {
        Self {
            bytes_per_window: bytes_per_sec.saturating_mul(window.as_secs().max(1)),
            window,
        }
    }
}

/// Why a request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading it failed.
    Read(hyper::Error),
    /// It arrived slower than the minimum rate.
    TooSlow,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "reading the request body failed: {e}"),
            Self::TooSlow => f.write_str("the request body arrived too slowly"),
        }
    }
}

impl std::error::Error for BodyError {}

/// A request body that fails with [`BodyError::TooSlow`] once a whole
/// window passes in which fewer than [`MinRate::bytes_per_window`] bytes
/// arrived. The first window is the grace period (the client may be slow
/// to start); a body that ends is never cut.
#[derive(Debug)]
pub struct PacedBody<B = hyper::body::Incoming> {
    inner: B,
    pace: Option<Box<Pace>>,
}

#[derive(Debug)]
struct Pace {
    rate: MinRate,
    /// Bytes arrived in the current window.
    arrived: u64,
    window_ends: Pin<Box<Sleep>>,
    /// Set once the body was cut, for the router to answer 408.
    too_slow: Arc<AtomicBool>,
}

impl<B> PacedBody<B> {
    /// A body that is passed through as it comes.
    pub fn unpaced(inner: B) -> Self {
        Self { inner, pace: None }
    }

    /// A body held to `rate`; the flag turns true if it is cut.
    pub fn paced(inner: B, rate: MinRate) -> (Self, Arc<AtomicBool>) {
        let too_slow = Arc::new(AtomicBool::new(false));
        if rate.bytes_per_window == 0 {
            return (Self::unpaced(inner), too_slow);
        }
        let pace = Pace {
            rate,
            arrived: 0,
            window_ends: Box::pin(tokio::time::sleep(rate.window)),
            too_slow: too_slow.clone(),
        };
        let body = Self {
            inner,
            pace: Some(Box::new(pace)),
        };
        (body, too_slow)
    }
}

impl Pace {
    /// Checks every window that has ended; `true` once one fell short.
    fn fell_short(&mut self, cx: &mut Context<'_>) -> bool {
        while self.window_ends.as_mut().poll(cx).is_ready() {
            if self.arrived < self.rate.bytes_per_window {
                self.too_slow.store(true, Ordering::Release);
                return true;
            }
            self.arrived = 0;
            let next = Instant::now() + self.rate.window;
            self.window_ends.as_mut().reset(next);
        }
        false
    }
}

impl<B> HttpBody for PacedBody<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Read(e)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                let cut = this.pace.as_mut().is_some_and(|p| p.fell_short(cx));
                return if cut {
                    Poll::Ready(Some(Err(BodyError::TooSlow)))
                } else {
                    Poll::Pending
                };
            }
        };
        if let (Some(pace), Some(data)) = (this.pace.as_mut(), frame.data_ref()) {
            pace.arrived += data.len() as u64;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A polling answer whose data is handed to hyper in pieces of at most
/// [`CREDIT_CHUNK`], each credited to the session's [`Outbox`] as hyper
/// takes it.
pub struct Credited {
    inner: Body,
    /// What is left of the last data frame.
    rest: Bytes,
    outbox: Arc<Outbox>,
}

impl Credited {
    pub fn new(inner: Body, outbox: Arc<Outbox>) -> Self {
        Self {
            inner,
            rest: Bytes::new(),
            outbox,
        }
    }

    fn piece(&mut self) -> Frame<Bytes> {
        let piece = self.rest.split_to(self.rest.len().min(CREDIT_CHUNK));
        self.outbox.written(piece.len());
        Frame::data(piece)
    }
}

impl HttpBody for Credited {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.piece())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(this.piece())))
                }
                Err(other) => Poll::Ready(Some(Ok(other))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// An answer that keeps its request in flight until hyper drops it.
pub struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn new(inner: Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body whose chunks become available at given (paused-clock) times.
    struct Scripted {
        chunks: VecDeque<(Instant, usize)>,
        wait: Option<Pin<Box<Sleep>>>,
    }

    impl Scripted {
        /// `total` bytes in chunks of `chunk`, one every `every`, with an
        /// extra `stall` before the chunk at `stall_at` bytes.
        fn new(total: usize, chunk: usize, every: Duration, stall: (usize, Duration)) -> Self {
            let mut at = Instant::now();
            let mut chunks = VecDeque::new();
            let mut sent = 0;
            while sent < total {
                at += every;
                if sent <= stall.0 && stall.0 < sent + chunk {
                    at += stall.1;
                }
                let n = chunk.min(total - sent);
                chunks.push_back((at, n));
                sent += n;
            }
            Self { chunks, wait: None }
        }
    }

    impl HttpBody for Scripted {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            let Some(&(at, n)) = self.chunks.front() else {
                return Poll::Ready(None);
            };
            let wait = self
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
            self.chunks.pop_front();
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
        }
    }

    /// Reads the whole body; the bytes read, or the error.
    async fn read(body: PacedBody<Scripted>) -> Result<usize, BodyError> {
        let mut body = std::pin::pin!(body);
        let mut total = 0;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            total += frame?.into_data().map(|d| d.len()).unwrap_or(0);
        }
        Ok(total)
    }

    /// The documented defaults: 2048 bytes per second over 20 s windows.
    fn default_rate() -> MinRate {
        MinRate::new(2048, Duration::from_secs(20))
    }

    #[tokio::test(start_paused = true)]
    async fn a_14_mb_message_at_one_mbit_per_second_passes_the_default_rate() {
        // 125 000 B/s in 16 KiB pieces: about 112 s for 14 MB, with a
        // 15 s stall of the link in the middle.
        let body = Scripted::new(
            14_000_000,
            16_384,
            Duration::from_secs_f64(16_384.0 / 125_000.0),
            (7_000_000, Duration::from_secs(15)),
        );
        let (body, too_slow) = PacedBody::paced(body, default_rate());
        assert_eq!(read(body).await.unwrap(), 14_000_000);
        assert!(!too_slow.load(Ordering::Acquire));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_cut_at_the_end_of_its_first_short_window() {
        let started = Instant::now();
        // 1 KiB per second, half the default minimum.
        let body = Scripted::new(1_000_000, 1024, Duration::from_secs(1), (0, Duration::ZERO));
        let (body, too_slow) = PacedBody::paced(body, default_rate());
        assert!(matches!(read(body).await, Err(BodyError::TooSlow)));
        assert!(too_slow.load(Ordering::Acquire));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(20),
            "cut when the grace window ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_after_a_fast_start_is_cut_one_window_later() {
        // 100 KB at once, then nothing for a minute.
        let body = Scripted::new(
            200_000,
            100_000,
            Duration::from_secs(1),
            (100_000, Duration::from_secs(60)),
        );
        let (body, _) = PacedBody::paced(body, default_rate());
        let started = Instant::now();
        assert!(matches!(read(body).await, Err(BodyError::TooSlow)));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(40),
            "the second window brought nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_rate_means_no_minimum() {
        let body = Scripted::new(10, 1, Duration::from_secs(30), (0, Duration::ZERO));
        let (body, _) = PacedBody::paced(body, MinRate::new(0, Duration::from_secs(1)));
        assert_eq!(read(body).await.unwrap(), 10);
    }
}
