//! Arrival-ordered delivery of a socket's events to its worker.
//!
//! socketioxide spawns a task per event, which reorders a socket's events
//! (SOCKETIOXIDE-NOTES.md, point 1). Instead, [`Enqueue`] implements
//! socketioxide's `MessageHandler` directly: it runs synchronously when the
//! packet arrives, decodes the payload there, and pushes the result into a
//! bounded per-socket queue that one worker task drains in order. No task
//! per event, and one slow event holds up only that socket's later events.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::Socket;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::payloads;

/// Events one socket may have waiting. Generous: a pasted list of a couple
/// of hundred lines arrives as one burst; a client that outruns its worker
/// by this much is flooding and is disconnected.
pub const QUEUE_CAPACITY: usize = 1024;

/// One unit of work for a socket's worker, in arrival order.
#[derive(Debug)]
pub enum Command {
    Join(Box<payloads::JoinSession>),
    SendMessage(Box<payloads::SendMessage>),
    GetPublicKeys(Box<payloads::SessionUser>),
    SavePublicKey(Box<payloads::SavePublicKey>),
    SetSessionKey(Box<payloads::SetSessionKey>),
    FileDownloaded(Box<payloads::FileDownloaded>),
    Typing(Box<payloads::SessionUser>),
    StoppedTyping(Box<payloads::SessionUser>),
    Leave(Box<payloads::SessionUser>),
    /// A known event whose payload did not decode.
    Invalid {
        event: &'static str,
        reason: String,
    },
    /// An event nobody handles.
    Unknown {
        event: String,
    },
    /// The socket is gone; always the last command.
    Disconnect,
}

/// A client event this server handles, with how its payload becomes a [`Command`].
pub struct Enqueue<P> {
    pub event: &'static str,
    /// Payloads are boxed in [`Command`] so that a queue slot stays small:
    /// the queue's first block of slots is allocated for every socket.
    pub wrap: fn(Box<P>) -> Command,
    pub tx: mpsc::Sender<Command>,
}

impl<A, P> MessageHandler<A, P> for Enqueue<P>
where
    A: Adapter,
    P: DeserializeOwned + Send + Sync + 'static,
{
    fn call(&self, s: Arc<Socket<A>>, mut v: Value, ack_id: Option<i64>) {
        crate::metrics::bytes_in(v.len());
        let command = match TryData::<P>::from_message_parts(&s, &mut v, &ack_id) {
            Ok(TryData(Ok(payload))) => (self.wrap)(Box::new(payload)),
            Ok(TryData(Err(e))) => Command::Invalid {
                event: self.event,
                reason: e.to_string(),
            },
            Err(never) => match never {},
        };
        push(&self.tx, s, command);
    }
}

/// The fallback for events nobody registered.
pub struct EnqueueUnknown {
    pub tx: mpsc::Sender<Command>,
}

impl<A: Adapter> MessageHandler<A, ()> for EnqueueUnknown {
    fn call(&self, s: Arc<Socket<A>>, mut v: Value, ack_id: Option<i64>) {
        /// Longest event name echoed back in `event-error`.
        const MAX_ECHOED_EVENT_LEN: usize = 64;
        let Ok(Event(mut event)) = Event::from_message_parts(&s, &mut v, &ack_id) else {
            return;
        };
        if event.len() > MAX_ECHOED_EVENT_LEN {
            let mut end = MAX_ECHOED_EVENT_LEN;
            while !event.is_char_boundary(end) {
                end -= 1;
            }
            event.truncate(end);
        }
        push(&self.tx, s, Command::Unknown { event });
    }
}

/// Queues `command`; a socket whose queue is full is flooding and is cut off.
fn push<A: Adapter>(tx: &mpsc::Sender<Command>, s: Arc<Socket<A>>, command: Command) {
    match tx.try_send(command) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(_)) => {
            tracing::warn!(sid = %s.id, "event queue full, disconnecting the socket");
            crate::metrics::forced_disconnect("queue_full");
            let _ = SocketRef::from(s).disconnect();
        }
    }
}
