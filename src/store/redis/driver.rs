//! The pub/sub driver under the socketioxide-redis adapter.
//!
//! socketioxide-redis ships a driver over one `MultiplexedConnection`, which
//! never reconnects: after a Redis restart a node would stop hearing the
//! others for good. This driver is the same protocol over redis-rs's
//! `ConnectionManager`, which reconnects by itself (even while idle: the
//! push channel reports the disconnection) and subscribes again to every
//! channel it had, so cross-node emits resume when Redis is back.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushInfo, PushKind};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// A reconnecting pub/sub driver for the Redis adapter.
#[derive(Clone)]
pub struct ManagedDriver {
    conn: ConnectionManager,
    handlers: Handlers,
    /// A channel only this node subscribes to: while Redis counts its
    /// subscriber, this connection's subscriptions are in place.
    probe: Arc<str>,
}

impl ManagedDriver {
    /// Connects; fails when Redis cannot be reached now.
    pub async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
        probe: String,
    ) -> redis::RedisResult<Self> {
        let handlers: Handlers = Arc::default();
        let sink = handlers.clone();
        let config = config
            .set_push_sender(move |push: PushInfo| {
                route(push, &sink);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        conn.subscribe(&probe).await?;
        Ok(Self {
            conn,
            handlers,
            probe: probe.into(),
        })
    }

    /// Whether this node hears the others: a round trip on the pub/sub
    /// connection (after Redis was lost, a reconnection attempt may have
    /// given up; this starts another) and its subscriptions in place again.
    pub async fn listening(&self) -> bool {
        let mut conn = self.conn.clone();
        let subscribers: redis::RedisResult<(String, u32)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&*self.probe)
            .query_async(&mut conn)
            .await;
        matches!(subscribers, Ok((_, n)) if n >= 1)
    }
}

/// Hands a published message to the adapter's stream for its channel. Never
/// blocks the connection: a stream that is full loses the message (logged).
fn route(push: PushInfo, handlers: &Handlers) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(chan), Ok(payload)) = (
        redis::from_redis_value::<String>(chan),
        redis::from_redis_value::<Vec<u8>>(payload),
    ) else {
        tracing::warn!("unreadable pub/sub message from Redis");
        return;
    };
    let handlers = handlers.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(tx) = handlers.get(&chan) {
        if tx.try_send((chan, payload)).is_err() {
            tracing::warn!("adapter stream full: a cross-node message was dropped");
            crate::metrics::broadcast_incomplete();
        }
    }
}

/// A Redis error, as the adapter reports it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DriverError(#[from] redis::RedisError);

impl Driver for ManagedDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn.clone().publish::<_, _, redis::Value>(chan, val).await?;
        Ok(())
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chan.clone(), tx);
        self.conn.clone().subscribe(&chan).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&chan);
        self.conn.clone().unsubscribe(&chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}
