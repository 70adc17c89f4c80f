//! What every scenario shares: where the server (or the servers of a
//! cluster) is, generated identities, session reservation, and the progress
//! line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::Semaphore;

use crate::sio;
use crate::stats::{read_proc, self_cpu_secs};

/// Settings given to every scenario.
pub struct Ctx {
    /// One address, or the nodes of a cluster: the members of a session are
    /// spread over them round-robin (see [`Ctx::addr_of`]).
    pub servers: Vec<SocketAddr>,
    /// Server processes whose RSS and CPU time are read (summed when several).
    pub server_pids: Vec<u32>,
    /// A Redis whose `INFO commandstats` / `INFO cpu` each fanout step reads.
    pub redis: Option<SocketAddr>,
    /// Handshakes + joins in flight at once during a join storm.
    pub concurrency: usize,
    /// Makes this run's session ids unique on a server that outlives it.
    pub nonce: String,
    pub progress: bool,
}

/// One generated session.
pub struct SessionSpec {
    pub id: String,
    pub key: String,
}

/// One generated user of a session.
pub struct Member {
    pub session: usize,
    /// Index within its session (0 = the creator).
    pub local: u32,
    /// Index across the whole run.
    pub global: u32,
    pub user_id: String,
    pub display_name: String,
    pub is_creator: bool,
}

impl Ctx {
    /// The server member `m` connects to: member `j` of session `s` goes to
    /// server `(s + j) % n`, so each session is spread over the servers
    /// round-robin, its creator on server `s % n` (the rotation moves by one
    /// per session, which keeps the load even). One server: always that one.
    pub fn addr_of(&self, m: &Member) -> SocketAddr {
        self.server_for(m.session, m.local)
    }

    fn server_for(&self, session: usize, local: u32) -> SocketAddr {
        self.servers[(session + local as usize) % self.servers.len()]
    }

    /// `count` sessions named `<nonce><tag><i>` with random-looking keys.
    pub fn sessions(&self, tag: &str, count: usize) -> Vec<Arc<SessionSpec>> {
        (0..count)
            .map(|i| {
                Arc::new(SessionSpec {
                    id: format!("{}{tag}{i}", self.nonce),
                    key: format!("{:016x}{:016x}", mix(i as u64 + 1), mix(!(i as u64))),
                })
            })
            .collect()
    }

    /// `users` members for each of `sessions` sessions, creators first.
    pub fn members(&self, sessions: usize, users: u32) -> Vec<Member> {
        let mut out = Vec::with_capacity(sessions * users as usize);
        for local in 0..users {
            for session in 0..sessions {
                let global = session as u32 * users + local;
                out.push(Member {
                    session,
                    local,
                    global,
                    user_id: format!("{:08x}-0000-4000-8000-{:012x}", mix(global as u64) as u32, global),
                    display_name: format!("User {global}"),
                    is_creator: local == 0,
                });
            }
        }
        out
    }

    /// Reserves every session over HTTP (a few at a time), each on the
    /// server its creator will join.
    pub async fn reserve_all(&self, sessions: &[Arc<SessionSpec>]) -> Result<()> {
        let sem = Arc::new(Semaphore::new(32));
        let mut tasks = Vec::with_capacity(sessions.len());
        for (i, s) in sessions.iter().enumerate() {
            let sem = sem.clone();
            let s = s.clone();
            let addr = self.server_for(i, 0);
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                sio::reserve(addr, &s.id, &s.key).await
            }));
        }
        let mut failed = 0;
        let mut first = None;
        for t in tasks {
            match t.await? {
                Ok(200) => {}
                Ok(code) => {
                    failed += 1;
                    first.get_or_insert(format!("HTTP {code}"));
                }
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e.to_string());
                }
            }
        }
        if failed > 0 {
            bail!(
                "{failed} of {} reservations failed (first: {})",
                sessions.len(),
                first.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Prints a progress line to stderr.
    pub fn progress(&self, line: std::fmt::Arguments<'_>) {
        if self.progress {
            eprintln!("{line}");
        }
    }
}

/// A public key the size of the stock client's (base64 SPKI of RSA-2048).
pub fn public_key(global: u32) -> String {
    let mut s = format!("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{global:08}");
    while s.len() < 392 {
        s.push(B64[(mix(s.len() as u64 ^ global as u64) % 64) as usize] as char);
    }
    s
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `len` bytes of base64-looking ciphertext.
pub fn payload(len: usize) -> String {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            B64[(x % 64) as usize] as char
        })
        .collect()
}

/// A cheap integer hash (splitmix64), for ids and jitter.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A one-line view of the server and the load generator, for progress lines.
pub struct Ticker {
    last_cpu: f64,
    last_server_cpu: Option<f64>,
    last: std::time::Instant,
    pids: Vec<u32>,
}

impl Ticker {
    pub fn new(pids: &[u32]) -> Self {
        Self {
            last_cpu: self_cpu_secs(),
            last_server_cpu: read_proc(pids).map(|r| r.cpu_secs),
            last: std::time::Instant::now(),
            pids: pids.to_vec(),
        }
    }

    /// "client 35% srv 97% rss 120 MiB" since the previous call.
    pub fn tick(&mut self) -> String {
        let dt = self.last.elapsed().as_secs_f64().max(1e-9);
        self.last = std::time::Instant::now();
        let cpu = self_cpu_secs();
        let client = (cpu - self.last_cpu) / dt * 100.0;
        self.last_cpu = cpu;
        let mut out = format!("client cpu {client:.0}%");
        if let Some(r) = read_proc(&self.pids) {
            if let Some(prev) = self.last_server_cpu {
                out += &format!(", server cpu {:.0}%", (r.cpu_secs - prev) / dt * 100.0);
            }
            self.last_server_cpu = Some(r.cpu_secs);
            out += &format!(", server rss {:.1} MiB", r.rss_kib as f64 / 1024.0);
        }
        out
    }
}

/// Waits until `done()` holds, checking every 20 ms, for at most `limit`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
