//! Log set-up: `info` by default, `DEBUG=true` adds this server's debug
//! lines, `RUST_LOG` overrides both, `LOG_FORMAT=json` writes one JSON
//! object per line. Nothing logs keys, ciphertext or plaintext: handlers log
//! event names, error codes and a hash tag of the session id only, and
//! socketioxide is built without its `tracing` feature.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub fn init(config: &Config) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ if config.debug => EnvFilter::new("info,e2e_chat_server=debug,tower_http=debug"),
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
