//! How many bytes one Socket.IO session has queued and its client has not
//! yet been sent.
//!
//! socketioxide's outgoing buffer is bounded in packets, not bytes: a
//! recipient that stops reading can hold 1024 packets of up to 20 MiB each.
//! The socket side counts what it queues ([`Outbox::queued`]); the HTTP
//! layer credits what it writes to the client ([`Outbox::written`]): every
//! byte written on the session's WebSocket connection
//! ([`super::conn::CuttableStream`]) and every byte of its polling GET
//! answers as hyper takes them ([`super::body::Credited`]). The difference
//! is what sits in buffers on the server's side for that session.
//!
//! It also keeps when the client was last heard from (bytes read on its
//! WebSocket, or a polling POST): a live client answers the engine's ping
//! every `PING_INTERVAL_MS`, so silence for longer means it is gone even
//! before the engine's heartbeat says so.
//!
//! Written bytes include what was never counted as queued (frame and HTTP
//! headers, pings, the handshake), so the credit saturates at zero: the
//! count never goes negative and never builds up credit that would hide
//! later queued bytes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The origin of [`Outbox::last_heard`]'s clock.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_millis() as u64
}

/// Bytes queued for one Socket.IO session and not yet written to its client.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: AtomicUsize,
    /// Woken whenever bytes are credited.
    drained: Notify,
    /// When the client was last heard from, in ms since [`EPOCH`].
    heard: AtomicU64,
}

impl Outbox {
    /// Counts `n` more bytes queued for the client; returns the new total.
    pub fn queued(&self, n: usize) -> usize {
        let before = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| Some(p.saturating_add(n)))
            .unwrap_or_else(|p| p);
        before.saturating_add(n)
    }

    /// The client sent something (bytes on its WebSocket, a polling POST).
    pub(crate) fn heard_from_client(&self) {
        self.heard
            .fetch_max(millis_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    /// Whether the client was heard from at `since` or later (to the
    /// millisecond).
    pub fn heard_since(&self, since: Instant) -> bool {
        self.heard.load(Ordering::Relaxed) >= millis_since_epoch(since)
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Resolves once `pending() <= level` (at once if already so). Cancel-safe:
    /// it holds nothing but a registration with the [`Notify`].
    pub async fn drained_to(&self, level: usize) {
        loop {
            // Registered before the check, so a credit between the check
            // and the wait still wakes it.
            let credited = self.drained.notified();
            if self.pending() <= level {
                return;
            }
            credited.await;
        }
    }

    /// Credits `n` bytes written to the client, down to zero at most, and
    /// wakes the waiters of [`Outbox::drained_to`] when that lowered the count.
    pub(crate) fn written(&self, n: usize) {
        if n == 0 {
            return;
        }
        let lowered = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p > 0).then(|| p.saturating_sub(n))
            })
            .is_ok();
        if lowered {
            self.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn credit_saturates_at_zero_and_builds_up_no_credit() {
        let outbox = Outbox::default();
        assert_eq!(outbox.queued(100), 100);
        outbox.written(30);
        assert_eq!(outbox.pending(), 70);
        outbox.written(500);
        assert_eq!(outbox.pending(), 0);
        outbox.written(500);
        assert_eq!(
            outbox.queued(10),
            10,
            "earlier over-credit must not hide new bytes"
        );
    }

    #[test]
    fn queued_saturates_instead_of_wrapping() {
        let outbox = Outbox::default();
        outbox.queued(usize::MAX - 1);
        assert_eq!(outbox.queued(10), usize::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn drained_to_waits_for_credits_down_to_its_level() {
        let outbox = Arc::new(Outbox::default());
        outbox.queued(1000);
        tokio::time::timeout(Duration::from_millis(1), outbox.drained_to(1000))
            .await
            .expect("already at the level: resolves at once");
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drained_to(100).await }
        });
        tokio::task::yield_now().await;
        outbox.written(500);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "500 pending is above 100");
        outbox.written(450);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken by the credit that reached its level")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn heard_since_is_true_only_for_what_came_after() {
        let outbox = Outbox::default();
        let asked = Instant::now();
        assert!(!outbox.heard_since(asked + Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(
            !outbox.heard_since(asked + Duration::from_millis(1)),
            "nothing heard yet"
        );
        outbox.heard_from_client();
        assert!(outbox.heard_since(asked + Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(!outbox.heard_since(Instant::now()), "heard before, not since");
    }

    #[tokio::test(start_paused = true)]
    async fn drained_to_can_be_cancelled_and_called_again() {
        let outbox = Outbox::default();
        outbox.queued(10);
        assert!(
            tokio::time::timeout(Duration::from_millis(5), outbox.drained_to(0))
                .await
                .is_err()
        );
        outbox.written(10);
        tokio::time::timeout(Duration::from_millis(5), outbox.drained_to(0))
            .await
            .expect("a cancelled wait leaves nothing behind");
    }
}
