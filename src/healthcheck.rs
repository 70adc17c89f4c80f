//! `e2e-chat-server healthcheck`: probes `GET /health` on this machine, so a
//! container's `HEALTHCHECK` needs no curl in the image.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

/// How long the probe waits for each step.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Ok when `/health` answers 200 on the configured port.
pub fn probe(config: &Config) -> Result<(), String> {
    let host = if config.host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        config.host
    };
    let addr = SocketAddr::new(host, config.port);
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => Err(format!("/health answered {}", String::from_utf8_lossy(status))),
    }
}
