//! Log set-up: `info` by default, `DEBUG=true` adds this server's debug
//! lines, `RUST_LOG` overrides both, `LOG_FORMAT=json` writes one JSON
//! object per line. Nothing logs keys, ciphertext or plaintext: handlers log
//! event names, error codes and a hash tag of the session id only, and
//! socketioxide is built without its `tracing` feature. socketioxide-redis
//! and socketioxide-core's adapter log whole cluster packets (ciphertext,
//! keys) at `trace`: the `trace` records of the Socket.IO and Engine.IO
//! crates are dropped whatever `RUST_LOG` asks for.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Crates whose `trace` records carry (or may carry) payloads.
const PAYLOAD_TRACING_CRATES: [&str; 5] = [
    "socketioxide",
    "socketioxide_core",
    "socketioxide_redis",
    "engineioxide",
    "engineioxide_core",
];

/// Whether a record may be written: nothing at `trace` from a crate that
/// logs payloads there.
fn carries_no_payload(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() < Level::TRACE
        || !PAYLOAD_TRACING_CRATES
            .iter()
            .any(|c| meta.target() == *c || meta.target().starts_with(&format!("{c}::")))
}

use crate::config::{Config, LogFormat};

pub fn init(config: &Config) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ if config.debug => EnvFilter::new("info,e2e_chat_server=debug,tower_http=debug"),
        _ => EnvFilter::new("info"),
    };
    let filter = filter.and(filter_fn(carries_no_payload));
    let ansi = std::io::stdout().is_terminal();
    let layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carrying_trace_records_are_dropped() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unimplemented!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level| {
            tracing::Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&SITE)),
                Kind::EVENT,
            )
        };
        assert!(!carries_no_payload(&meta("socketioxide_redis", Level::TRACE)));
        assert!(!carries_no_payload(&meta(
            "socketioxide_redis::drivers",
            Level::TRACE
        )));
        assert!(carries_no_payload(&meta("socketioxide_redis", Level::DEBUG)));
        assert!(!carries_no_payload(&meta(
            "socketioxide_core::adapter::request",
            Level::TRACE
        )));
        assert!(!carries_no_payload(&meta("engineioxide", Level::TRACE)));
        assert!(carries_no_payload(&meta(
            "socketioxide_redis_other",
            Level::TRACE
        )));
        assert!(carries_no_payload(&meta("e2e_chat_server", Level::TRACE)));
    }
}
