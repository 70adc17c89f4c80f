//! A joiner's history, page by page.
//!
//! A join answers the first page of the history (at most
//! [`HISTORY_PAGE_BYTES`](crate::store::HISTORY_PAGE_BYTES) of it, or one
//! larger message) in its own `messages-history`, before `session-metadata`
//! and `public-keys-updated`, as the contract orders them. The rest follows
//! from a task of its own, one `messages-history` per page; the stock
//! frontend merges every `messages-history` it gets by message id
//! (docs/PROTOCOL.md, "Facts about the stack", point 12). Each page is read
//! from the store only once the socket has written what was queued for it
//! before, so a history of any size costs about one page per joiner, and a
//! reader that stopped (even one that answers the heartbeat) holds no more:
//! after [`App::stall_timeout`](super::App) without progress it is cut off.
//!
//! Every page is charged to the socket's replay budget
//! (`HISTORY_REPLAY_BYTES_PER_MIN`); once it is spent, the replay waits, so
//! repeated joins cannot make the server send more. A replay ends when its
//! socket leaves, joins again (the new join's replay supersedes it), is no
//! longer the member's socket, or closes.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::events::outgoing;
use super::relay::{self, Relay};
use super::worker::Binding;
use crate::domain::{ConnId, Message, MessageView, UserId};
use crate::store::{HistoryCursor, Store};

/// Bytes a socket may have waiting to be written before the next page is
/// queued: about two pages, so that pages follow each other without a gap
/// and tungstenite's output buffer stays about a page large.
pub const REPLAY_LOW_WATER: usize = 2 * crate::store::HISTORY_PAGE_BYTES;

/// One socket's history replay budget: bytes per minute, spent as pages are
/// sent; it may go below zero by one page, which the next page waits for.
#[derive(Debug)]
pub struct ReplayBudget {
    per_sec: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl ReplayBudget {
    pub fn new(per_min: usize) -> Arc<Self> {
        let capacity = per_min as f64;
        Arc::new(Self {
            per_sec: capacity / 60.0,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        })
    }

    /// The state, refilled up to now: tokens (may be negative) and when.
    fn refilled(&self) -> MutexGuard<'_, (f64, Instant)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.per_sec).min(self.capacity);
        state.1 = now;
        state
    }

    /// Tokens now (may be negative).
    fn tokens(&self) -> f64 {
        self.refilled().0
    }

    /// Whether a page may be sent now.
    pub fn available(&self) -> bool {
        self.tokens() > 0.0
    }

    pub fn spend(&self, bytes: usize) {
        self.refilled().0 -= bytes as f64;
    }

    /// Waits until a page may be sent.
    async fn ready(&self) {
        loop {
            let tokens = self.tokens();
            if tokens > 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / self.per_sec)).await;
        }
    }
}

/// A history page as `viewer` sees it: its own plaintext only, where kept.
pub fn views<'a>(messages: &'a [Arc<Message>], viewer: &UserId) -> Vec<MessageView<'a>> {
    messages
        .iter()
        .map(|m| MessageView {
            message: m,
            original_content: (m.from == *viewer)
                .then_some(m.original_content.as_deref())
                .flatten(),
        })
        .collect()
}

/// What a replay needs besides its socket.
pub(super) struct ReplayJob {
    pub store: Store,
    pub binding: Binding,
    pub conn: ConnId,
    pub cursor: HistoryCursor,
    pub budget: Arc<ReplayBudget>,
    /// How long a socket may take to write what was queued for it.
    pub stall_timeout: Duration,
}

/// Starts the replay of the pages after the first; abort the handle to stop it.
pub(super) fn start<A: Adapter>(socket: SocketRef<A>, relay: Relay<A>, job: ReplayJob) -> AbortHandle {
    tokio::spawn(run(socket, relay, job)).abort_handle()
}

async fn run<A: Adapter>(socket: SocketRef<A>, relay: Relay<A>, mut job: ReplayJob) {
    let b = &job.binding;
    loop {
        job.budget.ready().await;
        if !relay::drained(&socket, REPLAY_LOW_WATER, job.stall_timeout).await {
            tracing::warn!(sid = %job.conn, "slow consumer: history not taken, disconnecting");
            crate::metrics::forced_disconnect("slow_consumer");
            relay::cut_off(&socket);
            return;
        }
        let Ok(page) = job
            .store
            .history_page(&b.session, &b.user, &job.conn, &job.cursor)
            .await
        else {
            // Redis lost: the client joins again once it is back.
            return;
        };
        if !page.messages.is_empty() {
            let sent = relay.to_socket(
                &socket,
                outgoing::MESSAGES_HISTORY,
                &views(&page.messages, &b.user),
            );
            job.budget.spend(sent);
        }
        match page.next {
            Some(next) => job.cursor = next,
            None => return,
        }
    }
}
