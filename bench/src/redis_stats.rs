//! What Redis did during a step, for benchmarks of the server's cluster mode
//! (`--redis ADDR`): `INFO cpu commandstats errorstats` read before and
//! after, over a connection of its own, and the difference per command.
//!
//! Redis counts the commands a Lua script runs under their own names as
//! well, so `calls` holds both the round trips of the nodes (`evalsha`,
//! `publish`, ...) and the work inside the scripts (`hget`, `rpush`, ...).
//! The probe's own `info` calls are left out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Counters of one `INFO` reading.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    at: Option<Instant>,
    /// command → (calls, failed_calls + rejected_calls, usec)
    commands: BTreeMap<String, (u64, u64, u64)>,
    /// error prefix (`NOSCRIPT`, `ERR`, ...) → count
    errors: BTreeMap<String, u64>,
    cpu_secs: f64,
}

/// Redis's work over one interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisUse {
    pub wall_secs: f64,
    /// Calls per command in the interval (commands run inside scripts included).
    pub calls: BTreeMap<String, u64>,
    /// `failed_calls` + `rejected_calls` over all commands.
    pub failed_calls: u64,
    /// Error replies by kind (`INFO errorstats`): `NOSCRIPT` is a script
    /// not yet in Redis's cache (the client loads it and calls again).
    pub errors: BTreeMap<String, u64>,
    /// `evalsha` + `eval` (+ their `_ro` forms, `fcall`): script round trips.
    pub script_calls: u64,
    /// Redis's time inside script calls, µs per call.
    pub script_usec_per_call: f64,
    /// `publish` + `spublish`: the adapter's broadcasts between nodes.
    pub publish_calls: u64,
    /// Every counted command.
    pub total_calls: u64,
    /// Redis CPU (`used_cpu_sys` + `used_cpu_user`) as a share of one core.
    pub cpu_share: f64,
}

const SCRIPT_COMMANDS: &[&str] = &["evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"];
const PUBLISH_COMMANDS: &[&str] = &["publish", "spublish"];

/// Reads `INFO cpu commandstats` from the Redis at `addr`.
pub async fn snapshot(addr: SocketAddr) -> Result<Snapshot> {
    timeout(Duration::from_secs(5), snapshot_inner(addr))
        .await
        .map_err(|_| anyhow!("INFO from Redis at {addr} timed out"))?
}

async fn snapshot_inner(addr: SocketAddr) -> Result<Snapshot> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to Redis at {addr}"))?;
    s.write_all(b"*4\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n$12\r\ncommandstats\r\n$10\r\nerrorstats\r\n")
        .await?;
    let mut buf = Vec::with_capacity(8192);
    let body = loop {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("Redis closed the connection before answering INFO");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            bail!("INFO answer larger than 1 MiB");
        }
        if let Some(body) = bulk_string(&buf)? {
            break body;
        }
    };
    let _ = s.shutdown().await;
    Ok(parse_info(&body))
}

/// The payload of a complete RESP bulk string, `None` while incomplete.
fn bulk_string(buf: &[u8]) -> Result<Option<String>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..eol]).unwrap_or("?");
    if !head.starts_with('$') {
        bail!("unexpected answer to INFO: {head:?}");
    }
    let len: usize = head[1..]
        .parse()
        .map_err(|_| anyhow!("bad bulk length {head:?}"))?;
    let start = eol + 2;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&buf[start..start + len]).into_owned(),
    ))
}

fn parse_info(body: &str) -> Snapshot {
    let mut snap = Snapshot {
        at: Some(Instant::now()),
        ..Snapshot::default()
    };
    for line in body.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let mut calls = 0;
            let mut failed = 0;
            let mut usec = 0;
            for kv in fields.split(',') {
                match kv.split_once('=') {
                    Some(("calls", v)) => calls = v.parse().unwrap_or(0),
                    Some(("usec", v)) => usec = v.parse().unwrap_or(0),
                    Some(("failed_calls" | "rejected_calls", v)) => failed += v.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
            snap.commands.insert(name.to_owned(), (calls, failed, usec));
        } else if let Some(rest) = line.strip_prefix("errorstat_") {
            if let Some((name, v)) = rest.split_once(":count=") {
                snap.errors.insert(name.to_owned(), v.parse().unwrap_or(0));
            }
        } else if let Some((k, v)) = line.split_once(':') {
            if k == "used_cpu_sys" || k == "used_cpu_user" {
                snap.cpu_secs += v.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    snap
}

impl Snapshot {
    /// What happened between `self` (earlier) and `later`.
    pub fn until(&self, later: &Snapshot) -> RedisUse {
        let wall = match (self.at, later.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let mut u = RedisUse {
            wall_secs: wall,
            cpu_share: (later.cpu_secs - self.cpu_secs).max(0.0) / wall.max(1e-9),
            ..RedisUse::default()
        };
        let mut script_usec = 0;
        for (name, &(calls, failed, usec)) in &later.commands {
            if name == "info" {
                continue;
            }
            let (c0, f0, u0) = self.commands.get(name).copied().unwrap_or((0, 0, 0));
            let calls = calls.saturating_sub(c0);
            u.failed_calls += failed.saturating_sub(f0);
            if calls == 0 {
                continue;
            }
            u.total_calls += calls;
            if SCRIPT_COMMANDS.contains(&name.as_str()) {
                u.script_calls += calls;
                script_usec += usec.saturating_sub(u0);
            }
            if PUBLISH_COMMANDS.contains(&name.as_str()) {
                u.publish_calls += calls;
            }
            u.calls.insert(name.clone(), calls);
        }
        u.script_usec_per_call = script_usec as f64 / u.script_calls.max(1) as f64;
        for (name, &n) in &later.errors {
            let n = n.saturating_sub(self.errors.get(name).copied().unwrap_or(0));
            if n > 0 {
                u.errors.insert(name.clone(), n);
            }
        }
        u
    }
}

impl RedisUse {
    /// "redis: per send 1.00 script calls, 1.00 publish, ...".
    pub fn line(&self, sent: u64) -> String {
        self.line_per(sent, "send")
    }

    /// The same per `what` (`n` of them).
    pub fn line_per(&self, n: u64, what: &str) -> String {
        let per = |v: u64| v as f64 / n.max(1) as f64;
        format!(
            "redis: per {what} {:.2} script calls ({:.0} µs each), {:.2} publish, {:.1} commands in all \
             (scripts' included); {} failed{}; redis cpu {:.0}% of a core",
            per(self.script_calls),
            self.script_usec_per_call,
            per(self.publish_calls),
            per(self.total_calls),
            self.failed_calls,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.errors)
            },
            self.cpu_share * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_and_differences() {
        let a = parse_info(
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.5\r\n# Commandstats\r\n\
             cmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=1\r\n\
             cmdstat_info:calls=3,usec=1,usec_per_call=0.3,rejected_calls=0,failed_calls=0\r\n",
        );
        let b = parse_info(
            "# CPU\r\nused_cpu_sys:2.0\r\nused_cpu_user:3.0\r\n# Commandstats\r\n\
             cmdstat_evalsha:calls=110,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=1\r\n\
             cmdstat_publish:calls=100,usec=5,usec_per_call=0.5,rejected_calls=2,failed_calls=0\r\n\
             cmdstat_hget:calls=300,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=5,usec=1,usec_per_call=0.3,rejected_calls=0,failed_calls=0\r\n\
             # Errorstats\r\nerrorstat_NOSCRIPT:count=1\r\n",
        );
        let u = a.until(&b);
        assert_eq!(u.errors.get("NOSCRIPT"), Some(&1));
        assert_eq!(u.script_calls, 100);
        assert_eq!(u.publish_calls, 100);
        assert_eq!(u.total_calls, 500);
        assert_eq!(u.failed_calls, 2);
        assert!(!u.calls.contains_key("info"));
        assert_eq!(
            bulk_string(b"$5\r\nab").unwrap(),
            None,
            "an incomplete bulk string waits for more"
        );
        assert_eq!(bulk_string(b"$2\r\nab\r\n").unwrap().as_deref(), Some("ab"));
    }
}
