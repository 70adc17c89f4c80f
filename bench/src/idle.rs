//! `idle` and `history`: join storms, and what joined connections cost.
//!
//! `idle`: C connections join sessions of G users (creators first, then the
//! members), as fast as the server lets them; then they stay connected
//! (answering pings) for H seconds while the server's RSS settles. Reports
//! joins/s and RSS per joined connection.
//!
//! `history`: for each level L (e.g. 0, 50, 500), sessions whose creator
//! first sent L messages are joined by a storm of members; each join replays
//! the history. Reports joins/s and join latency per level.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::common::{payload, public_key, Ctx, Member, SessionSpec, Ticker};
use crate::sio::{event_name, Client, Frame, JoinArgs};
use crate::stats::{latency_histogram, read_proc, record, CpuMeter, CpuUse, Latency, ProcReading};

/// Join-storm bookkeeping shared by the connection tasks.
struct Storm {
    joined: AtomicUsize,
    failed: AtomicUsize,
    disconnects: AtomicUsize,
    history_bytes: AtomicU64,
    history_messages: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Storm {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            joined: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            history_bytes: AtomicU64::new(0),
            history_messages: AtomicU64::new(0),
            hist: Mutex::new(latency_histogram()),
            first_error: Mutex::new(None),
        })
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        self.first_error
            .lock()
            .unwrap()
            .get_or_insert_with(|| e.to_string());
    }

    fn done(&self) -> usize {
        self.joined.load(Relaxed) + self.failed.load(Relaxed)
    }
}

/// Connects, joins, then holds the connection until told to stop.
async fn hold_conn(
    ctx: Arc<Ctx>,
    storm: Arc<Storm>,
    m: Member,
    session: Arc<SessionSpec>,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut started = Instant::now();
    let joined = async {
        let _permit = sem.acquire().await?;
        // Join latency: from the start of the handshake, not of the wait for a slot.
        started = Instant::now();
        let mut c = Client::connect(ctx.addr_of(&m)).await?;
        let pk = public_key(m.global);
        let j = c
            .join(&JoinArgs {
                session_id: &session.id,
                auth_key: &session.key,
                user_id: &m.user_id,
                display_name: &m.display_name,
                public_key: &pk,
                is_creator: m.is_creator,
            })
            .await?;
        anyhow::Ok((c, j))
    }
    .await;
    let mut c = match joined {
        Ok((c, j)) => {
            record(
                &mut storm.hist.lock().unwrap(),
                started.elapsed().as_micros() as u64,
            );
            storm.history_bytes.fetch_add(j.history_bytes as u64, Relaxed);
            storm
                .history_messages
                .fetch_add(j.history_messages as u64, Relaxed);
            storm.joined.fetch_add(1, Relaxed);
            c
        }
        Err(e) => {
            storm.failed.fetch_add(1, Relaxed);
            storm.note_error(format!("join: {e:#}"));
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            f = c.next_frame() => {
                if let Frame::Closed(why) = f {
                    storm.disconnects.fetch_add(1, Relaxed);
                    storm.note_error(format!("disconnected: {why}"));
                    return;
                }
            }
        }
    }
    c.close().await;
}

/// Result of one join storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    pub joins: usize,
    pub failed: usize,
    pub secs: f64,
    pub joins_per_s: f64,
    pub join_latency: Latency,
    pub history_bytes_per_join: f64,
    pub history_messages_per_join: f64,
    pub cpu: CpuUse,
}

/// Runs a storm of `members` (creators first, as a first wave) and returns
/// once every one has joined or failed; the connections stay open.
async fn storm(
    ctx: &Arc<Ctx>,
    label: &str,
    sessions: &[Arc<SessionSpec>],
    members: Vec<Member>,
    stop: &watch::Sender<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(Arc<Storm>, StormResult)> {
    let st = Storm::new();
    let sem = Arc::new(Semaphore::new(ctx.concurrency));
    let total = members.len();
    let cpu = CpuMeter::start(&ctx.server_pids);
    let started = Instant::now();
    let (creators, others): (Vec<_>, Vec<_>) = members.into_iter().partition(|m| m.is_creator);
    let mut ticker = Ticker::new(&ctx.server_pids);
    let mut launched = 0;
    for wave in [creators, others] {
        launched += wave.len();
        for m in wave {
            let s = sessions[m.session].clone();
            tasks.push(tokio::spawn(hold_conn(
                ctx.clone(),
                st.clone(),
                m,
                s,
                sem.clone(),
                stop.subscribe(),
            )));
        }
        let limit = Instant::now() + Duration::from_secs(600);
        let mut last_print = Instant::now();
        while st.done() < launched {
            if Instant::now() > limit {
                bail!("{label}: joins took longer than 600 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                ctx.progress(format_args!(
                    "[{label}] joined {}/{total} failed {} ({:.0} joins/s) | {}",
                    st.joined.load(Relaxed),
                    st.failed.load(Relaxed),
                    st.joined.load(Relaxed) as f64 / started.elapsed().as_secs_f64(),
                    ticker.tick()
                ));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let joins = st.joined.load(Relaxed);
    let result = StormResult {
        joins,
        failed: st.failed.load(Relaxed),
        secs,
        joins_per_s: joins as f64 / secs,
        join_latency: Latency::of(&st.hist.lock().unwrap()),
        history_bytes_per_join: st.history_bytes.load(Relaxed) as f64 / joins.max(1) as f64,
        history_messages_per_join: st.history_messages.load(Relaxed) as f64 / joins.max(1) as f64,
        cpu,
    };
    Ok((st, result))
}

async fn close_all(stop: &watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    let _ = stop.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub connections: usize,
    pub group: u32,
    pub hold_secs: f64,
    pub storm: StormResult,
    pub server_before: Option<ProcReading>,
    pub server_after_join: Option<ProcReading>,
    pub server_after_hold: Option<ProcReading>,
    /// (RSS after the hold − RSS before the storm) / joined connections.
    pub rss_per_connection_kib: Option<f64>,
    pub disconnects: usize,
    pub first_error: Option<String>,
}

pub async fn idle(ctx: Arc<Ctx>, connections: usize, group: u32, hold: Duration) -> Result<IdleReport> {
    let group = group.max(1);
    let n_sessions = connections.div_ceil(group as usize);
    let sessions = ctx.sessions("i", n_sessions);
    let before = read_proc(&ctx.server_pids);
    ctx.reserve_all(&sessions).await?;
    let mut members = ctx.members(n_sessions, group);
    // Creators first; fill up to exactly `connections`.
    members.truncate(connections);
    let (stop, _) = watch::channel(false);
    let mut tasks = Vec::new();
    let (st, result) = storm(&ctx, "idle", &sessions, members, &stop, &mut tasks).await?;
    let after_join = read_proc(&ctx.server_pids);
    let hold_end = Instant::now() + hold;
    let mut ticker = Ticker::new(&ctx.server_pids);
    while Instant::now() < hold_end {
        tokio::time::sleep(
            hold_end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(2)),
        )
        .await;
        ctx.progress(format_args!(
            "[idle] holding {} connections, disconnects {} | {}",
            st.joined.load(Relaxed) - st.disconnects.load(Relaxed),
            st.disconnects.load(Relaxed),
            ticker.tick()
        ));
    }
    let after_hold = read_proc(&ctx.server_pids);
    let joined = result.joins;
    let per_conn = match (before, after_hold) {
        (Some(b), Some(a)) if joined > 0 => Some((a.rss_kib as f64 - b.rss_kib as f64) / joined as f64),
        _ => None,
    };
    let report = IdleReport {
        scenario: "idle",
        connections: joined,
        group,
        hold_secs: hold.as_secs_f64(),
        storm: result,
        server_before: before,
        server_after_join: after_join,
        server_after_hold: after_hold,
        rss_per_connection_kib: per_conn,
        disconnects: st.disconnects.load(Relaxed),
        first_error: st.first_error.lock().unwrap().clone(),
    };
    close_all(&stop, tasks).await;
    Ok(report)
}

#[derive(Debug, Serialize)]
pub struct HistoryLevel {
    pub history: usize,
    pub seed_secs: f64,
    pub storm: StormResult,
    pub server_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub scenario: &'static str,
    pub sessions: usize,
    pub joiners_per_session: u32,
    pub payload_bytes: usize,
    pub levels: Vec<HistoryLevel>,
    pub first_error: Option<String>,
}

/// Creator of one session: joins, sends `count` messages (a window of them
/// in flight, each acknowledged by `message-sent`), then holds.
async fn seed_creator(
    ctx: Arc<Ctx>,
    m: Member,
    session: Arc<SessionSpec>,
    count: usize,
    body: Arc<str>,
    mut stop: watch::Receiver<bool>,
    seed: Arc<Storm>,
) {
    const WINDOW: usize = 32;
    let seeded = async {
        let mut c = Client::connect(ctx.addr_of(&m)).await?;
        let pk = public_key(m.global);
        c.join(&JoinArgs {
            session_id: &session.id,
            auth_key: &session.key,
            user_id: &m.user_id,
            display_name: &m.display_name,
            public_key: &pk,
            is_creator: true,
        })
        .await?;
        let (mut sent, mut acked) = (0usize, 0usize);
        let deadline = Instant::now() + Duration::from_secs(300);
        while acked < count {
            while sent < count && sent - acked < WINDOW {
                sent += 1;
                let msg = format!(
                    r#"42["send-message",{{"sessionId":"{}:{}","from":"{}","to":"all","encrypted":"{}","type":"text","clientMessageId":"h.{}.{}"}}]"#,
                    session.id, session.key, m.user_id, body, m.global, sent
                );
                c.send_text(msg).await?;
            }
            if Instant::now() > deadline {
                bail!("seeding history timed out");
            }
            match tokio::time::timeout(Duration::from_secs(30), c.next_frame()).await {
                Ok(Frame::Event(t)) if event_name(&t) == Some("message-sent") => acked += 1,
                Ok(Frame::Event(_) | Frame::Ping) => {}
                Ok(Frame::Closed(why)) => bail!("creator disconnected: {why}"),
                Err(_) => bail!("no message-sent for 30 s"),
            }
        }
        anyhow::Ok(c)
    }
    .await;
    let mut c = match seeded {
        Ok(c) => {
            seed.joined.fetch_add(1, Relaxed);
            c
        }
        Err(e) => {
            seed.failed.fetch_add(1, Relaxed);
            seed.note_error(format!("{e:#}"));
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            f = c.next_frame() => if let Frame::Closed(_) = f { break },
        }
    }
    c.close().await;
}

pub async fn history(
    ctx: Arc<Ctx>,
    n_sessions: usize,
    joiners: u32,
    levels: &[usize],
    payload_bytes: usize,
) -> Result<HistoryReport> {
    let body: Arc<str> = payload(payload_bytes).into();
    let mut out = Vec::new();
    let mut first_error = None;
    for (li, &level) in levels.iter().enumerate() {
        let sessions = ctx.sessions(&format!("h{li}x"), n_sessions);
        ctx.reserve_all(&sessions).await?;
        let all = ctx.members(n_sessions, joiners + 1);
        let (creators, members): (Vec<_>, Vec<_>) = all.into_iter().partition(|m| m.is_creator);
        let (stop, _) = watch::channel(false);
        let seed = Storm::new();
        let seed_started = Instant::now();
        let mut creator_tasks = Vec::new();
        for m in creators {
            let s = sessions[m.session].clone();
            creator_tasks.push(tokio::spawn(seed_creator(
                ctx.clone(),
                m,
                s,
                level,
                body.clone(),
                stop.subscribe(),
                seed.clone(),
            )));
        }
        let limit = Instant::now() + Duration::from_secs(600);
        while seed.done() < n_sessions {
            if Instant::now() > limit {
                bail!("history {level}: seeding took longer than 600 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if seed.failed.load(Relaxed) > 0 {
            let _ = stop.send(true);
            bail!(
                "history {level}: seeding failed: {}",
                seed.first_error.lock().unwrap().clone().unwrap_or_default()
            );
        }
        let seed_secs = seed_started.elapsed().as_secs_f64();
        ctx.progress(format_args!(
            "[history {level}] {n_sessions} sessions seeded with {level} messages in {seed_secs:.1} s"
        ));
        let mut tasks = Vec::new();
        let label = format!("history {level}");
        let (st, storm_result) = storm(&ctx, &label, &sessions, members, &stop, &mut tasks).await?;
        if first_error.is_none() {
            first_error = st.first_error.lock().unwrap().clone();
        }
        ctx.progress(format_args!(
            "[history {level}] {:.0} joins/s, join {}, {:.0} history messages per join",
            storm_result.joins_per_s,
            storm_result.join_latency.line(),
            storm_result.history_messages_per_join
        ));
        out.push(HistoryLevel {
            history: level,
            seed_secs,
            storm: storm_result,
            server_rss_kib: read_proc(&ctx.server_pids).map(|r| r.rss_kib),
        });
        close_all(&stop, tasks).await;
        for t in creator_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        // Let the server process the departures before the next storm.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(HistoryReport {
        scenario: "history",
        sessions: n_sessions,
        joiners_per_session: joiners,
        payload_bytes,
        levels: out,
        first_error,
    })
}
