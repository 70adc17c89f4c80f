//! Socket.IO-compatible relay server for an end-to-end-encrypted chat.
//!
//! [`Server::start`] builds everything from a [`Config`]: the HTTP API, the
//! Socket.IO endpoint, the session store and the eviction task. `main.rs`
//! only reads the configuration, starts logging and waits for a signal.

pub mod cluster;
pub mod config;
pub mod domain;
pub mod eviction;
pub mod healthcheck;
pub mod http;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod quota;
pub mod server;
pub mod socket;
pub mod store;

pub use config::{AllowedOrigins, Config, LogFormat, OriginalContent};
pub use server::{RunningServer, Server};
