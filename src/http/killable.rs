//! A TCP stream the server can cut off from elsewhere.
//!
//! socketioxide's `disconnect()` only takes a socket out of its namespace:
//! the Engine.IO connection stays open, and the call is refused outright
//! while the socket's outgoing buffer is full. To really cut off a flooder
//! or a reader that stopped reading, every connection carries a [`Kill`]
//! handle (a request extension of its Socket.IO requests): killing it makes
//! the stream fail, the engine closes the socket, and its departure is
//! handled as any other.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The switch of one connection.
#[derive(Clone, Default)]
pub struct Kill(Arc<Switch>);

#[derive(Default)]
struct Switch {
    killed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Kill {
    /// Makes every later read and write of the connection fail.
    pub fn kill(&self) {
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
}

/// A [`TcpStream`] with a [`Kill`] switch.
pub struct KillableStream {
    inner: TcpStream,
    kill: Kill,
}

impl KillableStream {
    pub fn new(inner: TcpStream) -> (Self, Kill) {
        let kill = Kill::default();
        (
            Self {
                inner,
                kill: kill.clone(),
            },
            kill,
        )
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.kill.check(&self.kill.0.reader, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.kill.check(&self.kill.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.kill.check(&self.kill.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.kill.check(&self.kill.0.writer, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
