//! Helpers of `tests/attacks_memory.rs` (included there by path): the real
//! binary on either store (a `redis-server` of its own for the Redis one),
//! and a sampler of the server's peak resident memory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::attack_support::{http_get, Spawned};

pub const MIB: u64 = 1024 * 1024;

/// Which store the server under attack runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Redis,
}

pub const BACKENDS: [Backend; 2] = [Backend::Memory, Backend::Redis];

/// A `redis-server` on a free port, stopped when dropped.
pub struct RedisProcess {
    child: Child,
    pub url: String,
}

impl RedisProcess {
    pub async fn start() -> RedisProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server: these tests need Redis 7 or newer on the PATH (scripts/test.sh installs it)",
            );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return RedisProcess {
                    child,
                    url: format!("redis://{addr}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not come up on {addr}");
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real server on `backend`, with `vars` set. The Redis process (if
/// any) lives as long as the returned pair.
pub async fn spawn_on(
    backend: Backend,
    name: &str,
    vars: &[(&str, String)],
) -> (Spawned, Option<RedisProcess>) {
    let mut vars: Vec<(&str, String)> = vars.to_vec();
    let redis = match backend {
        Backend::Memory => None,
        Backend::Redis => {
            let redis = RedisProcess::start().await;
            vars.push(("REDIS_URL", redis.url.clone()));
            Some(redis)
        }
    };
    let server = Spawned::start(&format!("{name}-{backend:?}"), &vars).await;
    assert_eq!(http_get(server.addr, "/health").await.map(|a| a.0), Ok(200));
    (server, redis)
}

/// Samples a process's resident memory every few milliseconds and keeps the
/// highest figure seen.
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> PeakRss {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        PeakRss { peak, stop, task }
    }

    /// The highest resident memory seen so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// VmRSS of `pid` in KiB, while it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Asserts that the server grew by no more than `bound` bytes over `base_kib`.
pub fn assert_within(what: &str, base_kib: u64, now_kib: u64, bound: u64) {
    let grown = now_kib.saturating_sub(base_kib) * 1024;
    println!(
        "{what}: grew {:.1} MiB (bound {:.1} MiB)",
        grown as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
    assert!(
        grown <= bound,
        "{what}: the server grew by {:.1} MiB, over its bound of {:.1} MiB",
        grown as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
}
