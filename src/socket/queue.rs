//! Arrival-ordered delivery of a socket's events to its worker.
//!
//! socketioxide spawns a task per event, which reorders a socket's events
//! (docs/PROTOCOL.md, "Facts about the stack", point 1). Instead, [`Dispatch`] implements
//! socketioxide's `MessageHandler` directly and is registered as the
//! socket's only (fallback) handler: it runs synchronously when a packet
//! arrives, decodes the payload by event name there, and pushes the result
//! into a bounded per-socket queue that one worker task drains in order. No
//! task per event, one handler per socket instead of one per event, and one
//! slow event holds up only that socket's later events.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::Socket;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::events::incoming;
use super::payloads;

/// Events one socket may have waiting. Generous: a pasted list of a couple
/// of hundred lines arrives as one burst; a client that outruns its worker
/// by this much is flooding and is disconnected.
pub const QUEUE_CAPACITY: usize = 1024;

/// Longest event name echoed back in `event-error`.
const MAX_ECHOED_EVENT_LEN: usize = 64;

/// One unit of work for a socket's worker, in arrival order. Payloads are
/// boxed so that a queue slot stays small: the queue's first block of slots
/// is allocated for every socket.
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
    /// A known event whose payload did not decode: the event and why.
    Invalid(&'static str, Box<String>),
    /// An event nobody handles, by name (cut to 64 bytes).
    Unknown(Box<String>),
    /// The socket is gone; always the last command.
    Disconnect,
}

/// The handler of every event of one socket.
pub struct Dispatch {
    pub tx: mpsc::Sender<Command>,
}

impl<A: Adapter> MessageHandler<A, ()> for Dispatch {
    fn call(&self, s: Arc<Socket<A>>, mut v: Value, ack_id: Option<i64>) {
        crate::metrics::bytes_in(v.len());
        let Ok(Event(event)) = Event::from_message_parts(&s, &mut v, &ack_id) else {
            return;
        };
        let mut decode = Decoder {
            s: &s,
            v: &mut v,
            ack_id: &ack_id,
        };
        let command = match event.as_str() {
            incoming::JOIN_SESSION => decode.command(incoming::JOIN_SESSION, Command::Join),
            incoming::SEND_MESSAGE => decode.command(incoming::SEND_MESSAGE, Command::SendMessage),
            incoming::GET_PUBLIC_KEYS => decode.command(incoming::GET_PUBLIC_KEYS, Command::GetPublicKeys),
            incoming::SAVE_PUBLIC_KEY => decode.command(incoming::SAVE_PUBLIC_KEY, Command::SavePublicKey),
            incoming::SET_SESSION_KEY => decode.command(incoming::SET_SESSION_KEY, Command::SetSessionKey),
            incoming::FILE_DOWNLOADED => decode.command(incoming::FILE_DOWNLOADED, Command::FileDownloaded),
            incoming::TYPING => decode.command(incoming::TYPING, Command::Typing),
            incoming::STOPPED_TYPING => decode.command(incoming::STOPPED_TYPING, Command::StoppedTyping),
            incoming::LEAVE_SESSION => decode.command(incoming::LEAVE_SESSION, Command::Leave),
            _ => Command::Unknown(Box::new(truncated(event, MAX_ECHOED_EVENT_LEN))),
        };
        push(&self.tx, s, command);
    }
}

/// Decodes one packet's payload into the command of its event.
struct Decoder<'a, A: Adapter> {
    s: &'a Arc<Socket<A>>,
    v: &'a mut Value,
    ack_id: &'a Option<i64>,
}

impl<A: Adapter> Decoder<'_, A> {
    fn command<P: DeserializeOwned>(&mut self, event: &'static str, wrap: fn(Box<P>) -> Command) -> Command {
        match TryData::<P>::from_message_parts(self.s, self.v, self.ack_id) {
            Ok(TryData(Ok(payload))) => wrap(Box::new(payload)),
            Ok(TryData(Err(e))) => Command::Invalid(event, Box::new(e.to_string())),
            Err(never) => match never {},
        }
    }
}

fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Queues `command`; a socket whose queue is full is flooding and is cut off.
fn push<A: Adapter>(tx: &mpsc::Sender<Command>, s: Arc<Socket<A>>, command: Command) {
    match tx.try_send(command) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(_)) => {
            tracing::warn!(sid = %s.id, "event queue full, disconnecting the socket");
            crate::metrics::forced_disconnect("queue_full");
            super::relay::cut_off(&SocketRef::from(s));
        }
    }
}
