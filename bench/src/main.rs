//! `e2e-chat-bench`: a load generator for e2e-chat-server (and for any server
//! of the same wire contract, such as the Node.js reference in
//! `bench/reference/`). It speaks Engine.IO v4 / Socket.IO v5 over WebSocket
//! itself and performs the application's real flow: reserve a session, the
//! creator joins, members join, then paced `send-message` to the room.
//!
//! Scenarios: `fanout`, `max`, `idle`, `history`, `large` (see `--help` of
//! each). A progress line goes to stderr once a second; a human summary to
//! stdout at the end, or JSON with `--json` (or into a file with `--out`).

mod common;
mod fanout;
mod idle;
mod large;
mod redis_stats;
mod sio;
mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use common::Ctx;
use fanout::{Criteria, FanoutArgs, MaxArgs, Population};

#[derive(Parser)]
#[command(
    name = "e2e-chat-bench",
    version,
    about = "Load generator for e2e-chat-server (Socket.IO over WebSocket)"
)]
struct Cli {
    /// Server address (loopback only is the intended use). Several,
    /// comma-separated, for the nodes of a cluster: member j of session s
    /// connects to server (s + j) % n (the creator, j = 0, to s % n, where its
    /// session is also reserved), so every session spans the nodes and the
    /// load is spread evenly.
    #[arg(long, global = true, default_value = "127.0.0.1:3001", value_delimiter = ',')]
    server: Vec<String>,
    /// PID of the server process, to read its RSS and CPU time from /proc;
    /// several, comma-separated, are added up (the nodes of a cluster).
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Address of the Redis a cluster shares: every fanout/max step then
    /// reports Redis's commands (INFO commandstats) and CPU over the step.
    #[arg(long, global = true)]
    redis: Option<String>,
    /// Print the result as JSON on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Also write the JSON result to this file.
    #[arg(long, global = true)]
    out: Option<std::path::PathBuf>,
    /// Handshakes and joins in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    concurrency: usize,
    /// Tokio worker threads of the load generator.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// No progress lines.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct PopArgs {
    /// Sessions.
    #[arg(long, short = 's', default_value_t = 100)]
    sessions: usize,
    /// Users per session (creator included).
    #[arg(long, short = 'n', default_value_t = 5)]
    users: u32,
    /// Ciphertext bytes per message.
    #[arg(long, short = 'p', default_value_t = 200)]
    payload: usize,
}

#[derive(Args, Clone)]
struct CritArgs {
    /// Lowest delivery ratio that passes.
    #[arg(long, default_value_t = 0.999)]
    min_delivery: f64,
    /// Highest p99 latency (ms) that passes.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Seconds to wait for in-flight deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

#[derive(Subcommand)]
enum Scenario {
    /// S sessions × N users, R msgs/s per user for D seconds.
    Fanout {
        #[command(flatten)]
        pop: PopArgs,
        /// Messages per second per user.
        #[arg(long, short = 'r', default_value_t = 10.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, short = 'd', default_value_t = 30.0)]
        duration: f64,
        #[command(flatten)]
        crit: CritArgs,
    },
    /// Ramps the rate until delivery < 99.9 % or p99 > 50 ms; reports the
    /// highest sustainable deliveries/s.
    Max {
        #[command(flatten)]
        pop: PopArgs,
        /// Deliveries/s of the first step.
        #[arg(long, default_value_t = 5000.0)]
        start: f64,
        /// Growth of the rate per passing step (until the first failure).
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 10.0)]
        step_secs: f64,
        /// Most steps in all.
        #[arg(long, default_value_t = 14)]
        max_steps: u32,
        /// Bisection steps after the first failure.
        #[arg(long, default_value_t = 3)]
        refine: u32,
        #[command(flatten)]
        crit: CritArgs,
    },
    /// C joined connections held; join storm joins/s; server RSS per connection.
    Idle {
        /// Connections.
        #[arg(long, short = 'c', default_value_t = 10_000)]
        connections: usize,
        /// Users per session.
        #[arg(long, default_value_t = 5)]
        group: u32,
        /// Seconds to hold the connections before reading the server's RSS.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// Join storm into sessions that hold 0 / 50 / 500 messages.
    History {
        /// Sessions per level.
        #[arg(long, short = 's', default_value_t = 50)]
        sessions: usize,
        /// Joiners per session.
        #[arg(long, default_value_t = 10)]
        joiners: u32,
        /// History lengths, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,50,500")]
        levels: Vec<usize>,
        /// Ciphertext bytes per stored message.
        #[arg(long, short = 'p', default_value_t = 200)]
        payload: usize,
    },
    /// 1 MB and 5 MB ciphertexts in 2-person sessions.
    Large {
        /// Ciphertext sizes in bytes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000000,5000000")]
        sizes: Vec<usize>,
        /// 2-person sessions.
        #[arg(long, short = 's', default_value_t = 2)]
        sessions: usize,
        /// Messages each user sends per size.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Time limit per size, seconds.
        #[arg(long, default_value_t = 120.0)]
        limit: f64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread by default: everything on the thread that is pinned to
    // the load generator's core, with no cross-thread wake-ups.
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(cli))
}

fn resolve(flag: &str, s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("bad {flag} {s:?}"))?
        .next()
        .with_context(|| format!("{flag} {s:?} resolves to nothing"))
}

async fn run(cli: Cli) -> Result<()> {
    stats::now_us();
    let nonce = format!(
        "b{:x}",
        common::mix(std::process::id() as u64 ^ wall_ms()) & 0xff_ffff
    );
    let servers = cli
        .server
        .iter()
        .map(|s| resolve("--server", s.trim()))
        .collect::<Result<Vec<_>>>()?;
    if servers.is_empty() {
        anyhow::bail!("--server needs at least one address");
    }
    let ctx = Arc::new(Ctx {
        servers,
        server_pids: cli.server_pid.clone(),
        redis: cli.redis.as_deref().map(|s| resolve("--redis", s)).transpose()?,
        concurrency: cli.concurrency.max(1),
        nonce,
        progress: !cli.quiet,
    });
    let crit = |c: &CritArgs| Criteria {
        min_delivery_ratio: c.min_delivery,
        max_p99_ms: c.max_p99_ms,
    };
    let pop = |p: &PopArgs| Population {
        sessions: p.sessions,
        users: p.users,
        payload_bytes: p.payload,
    };
    let (json, summary) = match &cli.scenario {
        Scenario::Fanout {
            pop: p,
            rate,
            duration,
            crit: c,
        } => {
            let r = fanout::fanout(
                ctx.clone(),
                FanoutArgs {
                    pop: pop(p),
                    rate: *rate,
                    secs: *duration,
                    drain: Duration::from_secs_f64(c.drain),
                    crit: crit(c),
                },
            )
            .await?;
            (to_json(&r)?, summary_fanout(&r))
        }
        Scenario::Max {
            pop: p,
            start,
            factor,
            step_secs,
            max_steps,
            refine,
            crit: c,
        } => {
            let r = fanout::max(
                ctx.clone(),
                MaxArgs {
                    pop: pop(p),
                    start: *start,
                    factor: factor.max(1.05),
                    step_secs: *step_secs,
                    max_steps: (*max_steps).clamp(1, 50),
                    refine: *refine,
                    drain: Duration::from_secs_f64(c.drain),
                    crit: crit(c),
                },
            )
            .await?;
            (to_json(&r)?, summary_max(&r))
        }
        Scenario::Idle {
            connections,
            group,
            hold,
        } => {
            let r = idle::idle(ctx.clone(), *connections, *group, Duration::from_secs_f64(*hold)).await?;
            (to_json(&r)?, summary_idle(&r))
        }
        Scenario::History {
            sessions,
            joiners,
            levels,
            payload,
        } => {
            let r = idle::history(ctx.clone(), *sessions, *joiners, levels, *payload).await?;
            (to_json(&r)?, summary_history(&r))
        }
        Scenario::Large {
            sizes,
            sessions,
            count,
            limit,
        } => {
            let r = large::large(
                ctx.clone(),
                sizes,
                *sessions,
                *count,
                Duration::from_secs_f64(*limit),
            )
            .await?;
            (to_json(&r)?, summary_large(&r))
        }
    };
    if let Some(path) = &cli.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if cli.json {
        eprintln!("{summary}");
        println!("{json}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

fn step_lines(r: &fanout::StepResult) -> String {
    let mut s = format!(
        "  rate {:.2} msgs/s/user for {:.1} s: sent {} ({:.1}% of schedule), delivered {}/{} (ratio {:.5})\n  \
         deliveries/s {:.0}\n  latency {}\n  order violations {}, errors {}, stale {}, max send lag {:.1} ms\n  {}",
        r.per_user_rate,
        r.secs,
        r.sent,
        r.send_ratio * 100.0,
        r.delivered,
        r.expected,
        r.delivery_ratio,
        r.deliveries_per_s,
        r.latency.line(),
        r.order_violations,
        r.errors,
        r.stale,
        r.max_send_lag_ms,
        r.cpu.line()
    );
    if let Some(redis) = &r.redis {
        s += &format!("\n  {}", redis.line(r.sent));
    }
    s
}

fn summary_fanout(r: &fanout::FanoutReport) -> String {
    format!(
        "fanout: {} sessions × {} users ({} connected, {} failed, set up in {:.1} s), {} B payload\n{}\n  disconnects {}{}",
        r.population.sessions,
        r.population.users,
        r.connections,
        r.setup_failed,
        r.setup_secs,
        r.population.payload_bytes,
        step_lines(&r.result),
        r.disconnects,
        r.first_error.as_ref().map(|e| format!(", first error: {e}")).unwrap_or_default()
    ) + &setup_redis_line(r.setup_redis.as_ref(), r.population.sessions, r.connections)
}

/// Redis's work during the setup, per HTTP reservation or join.
fn setup_redis_line(r: Option<&redis_stats::RedisUse>, sessions: usize, joins: usize) -> String {
    r.map(|r| {
        format!(
            "\n  setup ({sessions} reservations + {joins} joins) {}",
            r.line_per((sessions + joins) as u64, "reservation or join")
        )
    })
    .unwrap_or_default()
}

fn summary_max(r: &fanout::MaxReport) -> String {
    let mut s = format!(
        "max: {} sessions × {} users ({} connected), {} B payload; pass = {}\n",
        r.population.sessions, r.population.users, r.connections, r.population.payload_bytes, r.criteria
    );
    for (i, st) in r.steps.iter().enumerate() {
        s += &format!(
            "  step {}: {:.0} deliv/s asked, {:.0} deliv/s done, ratio {:.5}, p99 {:.1} ms, client cpu {:.0}%, server cpu {} => {}\n",
            i + 1,
            st.target_deliveries_per_s,
            st.deliveries_per_s,
            st.delivery_ratio,
            st.latency.p99_ms,
            st.cpu.client_cpu_share * 100.0,
            st.cpu
                .server_cpu_share
                .map_or("?".into(), |v| format!("{:.0}%", v * 100.0)),
            if st.pass { "pass" } else { "FAIL" }
        );
        if let Some(redis) = &st.redis {
            s += &format!("    {}\n", redis.line(st.sent));
        }
    }
    s += &format!(
        "  sustainable: {:.0} deliveries/s ({}), disconnects {}",
        r.sustainable_deliveries_per_s, r.stopped_because, r.disconnects
    );
    if let Some(b) = &r.best {
        s += &format!("\n  best step latency {}", b.latency.line());
    }
    s += &setup_redis_line(r.setup_redis.as_ref(), r.population.sessions, r.connections);
    if let Some(e) = &r.first_error {
        s += &format!("\n  first error: {e}");
    }
    s
}

fn summary_idle(r: &idle::IdleReport) -> String {
    format!(
        "idle: {} connections joined in sessions of {} ({} failed) in {:.2} s = {:.0} joins/s\n  join latency {}\n  {}\n  \
         server RSS before {} KiB, after join {} KiB, after {:.0} s hold {} KiB => {} KiB per connection\n  disconnects {}{}",
        r.connections,
        r.group,
        r.storm.failed,
        r.storm.secs,
        r.storm.joins_per_s,
        r.storm.join_latency.line(),
        r.storm.cpu.line(),
        r.server_before.map_or("?".into(), |p| p.rss_kib.to_string()),
        r.server_after_join.map_or("?".into(), |p| p.rss_kib.to_string()),
        r.hold_secs,
        r.server_after_hold.map_or("?".into(), |p| p.rss_kib.to_string()),
        r.rss_per_connection_kib.map_or("?".into(), |v| format!("{v:.1}")),
        r.disconnects,
        r.first_error.as_ref().map(|e| format!(", first error: {e}")).unwrap_or_default()
    )
}

fn summary_history(r: &idle::HistoryReport) -> String {
    let mut s = format!(
        "history: {} sessions × {} joiners per level, {} B messages\n",
        r.sessions, r.joiners_per_session, r.payload_bytes
    );
    for l in &r.levels {
        s += &format!(
            "  {} messages: {} joins ({} failed) at {:.0} joins/s, {:.0} B history per join, join latency {}\n    {}\n",
            l.history,
            l.storm.joins,
            l.storm.failed,
            l.storm.joins_per_s,
            l.storm.history_bytes_per_join,
            l.storm.join_latency.line(),
            l.storm.cpu.line()
        );
    }
    if let Some(e) = &r.first_error {
        s += &format!("  first error: {e}");
    }
    s
}

fn summary_large(r: &large::LargeReport) -> String {
    let mut s = String::from("large:\n");
    for z in &r.sizes {
        s += &format!(
            "  {} B × {} per user in {} sessions of 2: delivered {}/{} in {:.1} s = {:.1} MB/s, latency {}\n    \
             server RSS before {} KiB, peak {} KiB, after {} KiB; {}\n",
            z.bytes,
            z.messages_per_user,
            z.sessions,
            z.delivered,
            z.sent,
            z.secs,
            z.delivered_mb_per_s,
            z.latency.line(),
            z.server_rss_before_kib.map_or("?".into(), |v| v.to_string()),
            z.server_peak_rss_kib.map_or("?".into(), |v| v.to_string()),
            z.server_rss_after_kib.map_or("?".into(), |v| v.to_string()),
            z.cpu.line()
        );
    }
    if let Some(e) = &r.first_error {
        s += &format!("  first error: {e}");
    }
    s
}
