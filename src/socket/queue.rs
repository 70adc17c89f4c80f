//! Arrival-ordered delivery of a socket's events to its worker.
//!
//! socketioxide spawns a task per event, which reorders a socket's events
//! (docs/PROTOCOL.md, "Facts about the stack", point 1). Instead, [`Dispatch`] implements
//! socketioxide's `MessageHandler` directly and is registered as the
//! socket's only (fallback) handler: it runs synchronously when a packet
//! arrives, decodes the payload by event name there, and pushes the result
//! into the socket's [`Mailbox`], a bounded queue drained in order by
//! whichever task finds the worker idle. An idle socket has no task and no
//! channel, only its worker's state; one slow event holds up only that
//! socket's later events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::Socket;
use tokio_util::task::TaskTracker;

use super::events::incoming;
use super::payloads;
use super::worker::Worker;

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

/// A queue kept for a socket that has had a burst: its memory goes back
/// once it empties.
const KEPT_QUEUE_SLOTS: usize = 8;

/// One socket's commands waiting for its worker, and the worker itself while
/// no task runs it. The command that finds the worker idle spawns a task
/// (tracked, so that shutdown waits for it) that handles the queue in order
/// and puts the worker back when it is empty.
///
/// The worker holds the socket, whose handlers hold this mailbox: the
/// disconnect command (always the last, always taken) drops the worker and
/// so breaks that cycle.
pub struct Mailbox<A: Adapter> {
    state: Mutex<MailboxState<A>>,
    tasks: TaskTracker,
}

struct MailboxState<A: Adapter> {
    queue: VecDeque<Command>,
    /// Here while no task runs it; taken by the task that does; gone once
    /// the socket's disconnect was handled.
    worker: Option<Box<Worker<A>>>,
    /// The disconnect was queued, or the worker gave up: nothing more is taken.
    closed: bool,
}

impl<A: Adapter> Mailbox<A> {
    pub fn new(worker: Worker<A>, tasks: TaskTracker) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(MailboxState {
                queue: VecDeque::new(),
                worker: Some(Box::new(worker)),
                closed: false,
            }),
            tasks,
        })
    }

    fn lock(&self) -> MutexGuard<'_, MailboxState<A>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `command` and starts the worker if it is idle; `false` when
    /// [`QUEUE_CAPACITY`] commands already wait (the socket is flooding).
    /// [`Command::Disconnect`] is always taken.
    pub fn push(self: &Arc<Self>, command: Command) -> bool {
        let idle = {
            let mut state = self.lock();
            if state.closed {
                return true;
            }
            let last = matches!(command, Command::Disconnect);
            if !last && state.queue.len() >= QUEUE_CAPACITY {
                return false;
            }
            state.closed = last;
            state.queue.push_back(command);
            state.worker.take()
        };
        if let Some(worker) = idle {
            let mailbox = self.clone();
            self.tasks.spawn(mailbox.drain(worker));
        }
        true
    }

    /// Handles the queued commands in order; puts the worker back once none
    /// is left, or drops it once it is done with the socket.
    async fn drain(self: Arc<Self>, mut worker: Box<Worker<A>>) {
        loop {
            let command = {
                let mut state = self.lock();
                match state.queue.pop_front() {
                    Some(command) => command,
                    None => {
                        if state.queue.capacity() > KEPT_QUEUE_SLOTS {
                            state.queue = VecDeque::new();
                        }
                        state.worker = Some(worker);
                        return;
                    }
                }
            };
            if !worker.handle_command(command).await {
                let mut state = self.lock();
                state.closed = true;
                state.queue = VecDeque::new();
                return;
            }
        }
    }
}

/// The handler of every event of one socket.
pub struct Dispatch<A: Adapter> {
    pub mailbox: Arc<Mailbox<A>>,
}

impl<A: Adapter> MessageHandler<A, ()> for Dispatch<A> {
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
        if !self.mailbox.push(command) {
            tracing::warn!(sid = %s.id, "event queue full, disconnecting the socket");
            crate::metrics::forced_disconnect("queue_full");
            super::relay::cut_off(&SocketRef::from(s));
        }
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
