//! `large`: big ciphertexts (1 MB, 5 MB: files the stock client sends as
//! base64) in 2-person sessions. Both members send `count` messages each,
//! one at a time (the next after `message-sent` comes back), to the other.
//! Reports delivered MB/s, latency, and the server's peak RSS.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Barrier};

use crate::common::{payload, public_key, Ctx, Member, SessionSpec, Ticker};
use crate::sio::{event_name, string_field, Client, Frame, JoinArgs, ENCRYPTED_FIELD, ID_FIELD};
use crate::stats::{latency_histogram, now_us, read_proc, record, CpuMeter, CpuUse, Latency, RssSampler};

struct Shared {
    sent: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    finished: AtomicUsize,
    failed: AtomicUsize,
    hist: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, e: impl std::fmt::Display) {
        self.first_error
            .lock()
            .unwrap()
            .get_or_insert_with(|| e.to_string());
    }
}

#[derive(Debug, Serialize)]
pub struct SizeResult {
    pub bytes: usize,
    pub sessions: usize,
    pub messages_per_user: usize,
    pub sent: u64,
    pub delivered: u64,
    pub secs: f64,
    pub delivered_mb_per_s: f64,
    pub latency: Latency,
    pub server_rss_before_kib: Option<u64>,
    pub server_peak_rss_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub cpu: CpuUse,
    pub failed: usize,
}

#[derive(Debug, Serialize)]
pub struct LargeReport {
    pub scenario: &'static str,
    pub sizes: Vec<SizeResult>,
    pub first_error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn pair_member(
    ctx: Arc<Ctx>,
    sh: Arc<Shared>,
    m: Member,
    session: Arc<SessionSpec>,
    body: Arc<str>,
    count: usize,
    go: Arc<Barrier>,
    mut stop: watch::Receiver<bool>,
) {
    let join = || async {
        let mut c = Client::connect(ctx.addr_of(&m)).await?;
        let pk = public_key(m.global);
        c.join(&JoinArgs {
            session_id: &session.id,
            auth_key: &session.key,
            user_id: &m.user_id,
            display_name: &m.display_name,
            public_key: &pk,
            is_creator: m.is_creator,
        })
        .await?;
        anyhow::Ok(c)
    };
    // Members join after their creator.
    let c = if m.is_creator {
        let c = join().await;
        go.wait().await;
        c
    } else {
        go.wait().await;
        join().await
    };
    // Everybody starts sending once every pair is complete.
    go.wait().await;
    let mut c = match c {
        Ok(c) => c,
        Err(e) => {
            sh.failed.fetch_add(1, Relaxed);
            sh.note_error(format!("join: {e:#}"));
            return;
        }
    };
    let mut sent = 0usize;
    let mut in_flight = false;
    let mut done_reported = false;
    loop {
        if !in_flight && sent < count {
            sent += 1;
            in_flight = true;
            let msg = format!(
                r#"42["send-message",{{"sessionId":"{}:{}","from":"{}","to":"all","type":"file","clientMessageId":"l.{}.{}.{}","encrypted":"{}"}}]"#,
                session.id,
                session.key,
                m.user_id,
                m.global,
                sent,
                now_us(),
                body
            );
            sh.sent.fetch_add(1, Relaxed);
            if let Err(e) = c.send_text(msg).await {
                sh.failed.fetch_add(1, Relaxed);
                sh.note_error(format!("send: {e:#}"));
                return;
            }
        }
        if !in_flight && sent >= count && !done_reported {
            done_reported = true;
            sh.finished.fetch_add(1, Relaxed);
        }
        tokio::select! {
            _ = stop.changed() => break,
            f = c.next_frame() => match f {
                Frame::Event(t) => match event_name(&t) {
                    Some("message-sent") => in_flight = false,
                    Some("new-message") => {
                        let ts = string_field(&t, ID_FIELD)
                            .and_then(|id| id.rsplit('.').next())
                            .and_then(|v| v.parse::<u64>().ok());
                        if let Some(ts) = ts {
                            record(&mut sh.hist.lock().unwrap(), now_us().saturating_sub(ts));
                        }
                        let len = string_field(&t, ENCRYPTED_FIELD).map_or(0, str::len) as u64;
                        sh.delivered.fetch_add(1, Relaxed);
                        sh.delivered_bytes.fetch_add(len, Relaxed);
                    }
                    Some("session-error") | Some("event-error") => {
                        sh.note_error(t.chars().take(300).collect::<String>());
                    }
                    _ => {}
                },
                Frame::Ping => {}
                Frame::Closed(why) => {
                    sh.failed.fetch_add(1, Relaxed);
                    sh.note_error(format!("disconnected: {why}"));
                    return;
                }
            }
        }
    }
    c.close().await;
}

pub async fn large(
    ctx: Arc<Ctx>,
    sizes: &[usize],
    n_sessions: usize,
    count: usize,
    limit: Duration,
) -> Result<LargeReport> {
    let mut out = Vec::new();
    let mut first_error = None;
    for (i, &bytes) in sizes.iter().enumerate() {
        let sessions = ctx.sessions(&format!("l{i}x"), n_sessions);
        ctx.reserve_all(&sessions).await?;
        let members = ctx.members(n_sessions, 2);
        let sh = Arc::new(Shared {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            hist: Mutex::new(latency_histogram()),
            first_error: Mutex::new(None),
        });
        let body: Arc<str> = payload(bytes).into();
        let before = read_proc(&ctx.server_pids).map(|r| r.rss_kib);
        let rss = RssSampler::start(&ctx.server_pids);
        let (stop, _) = watch::channel(false);
        let go = Arc::new(Barrier::new(members.len() + 1));
        let n = members.len();
        let mut tasks = Vec::new();
        for m in members {
            let s = sessions[m.session].clone();
            tasks.push(tokio::spawn(pair_member(
                ctx.clone(),
                sh.clone(),
                m,
                s,
                body.clone(),
                count,
                go.clone(),
                stop.subscribe(),
            )));
        }
        go.wait().await; // creators joined
        go.wait().await; // members joined
        let cpu = CpuMeter::start(&ctx.server_pids);
        let started = Instant::now();
        let expected = (n * count) as u64;
        let mut ticker = Ticker::new(&ctx.server_pids);
        let mut last_print = Instant::now();
        while started.elapsed() < limit
            && (sh.delivered.load(Relaxed) < expected || sh.finished.load(Relaxed) < n)
            && sh.failed.load(Relaxed) == 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                ctx.progress(format_args!(
                    "[large {bytes} B] delivered {}/{expected}, {:.1} MB/s | {}",
                    sh.delivered.load(Relaxed),
                    sh.delivered_bytes.load(Relaxed) as f64 / 1e6 / started.elapsed().as_secs_f64(),
                    ticker.tick()
                ));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu.stop();
        let peak = rss.stop(&ctx.server_pids);
        let _ = stop.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let res = SizeResult {
            bytes,
            sessions: n_sessions,
            messages_per_user: count,
            sent: sh.sent.load(Relaxed),
            delivered: sh.delivered.load(Relaxed),
            secs,
            delivered_mb_per_s: sh.delivered_bytes.load(Relaxed) as f64 / 1e6 / secs,
            latency: Latency::of(&sh.hist.lock().unwrap()),
            server_rss_before_kib: before,
            server_peak_rss_kib: (!ctx.server_pids.is_empty()).then_some(peak),
            server_rss_after_kib: read_proc(&ctx.server_pids).map(|r| r.rss_kib),
            cpu,
            failed: sh.failed.load(Relaxed),
        };
        ctx.progress(format_args!(
            "[large {bytes} B] {:.1} MB/s, latency {}",
            res.delivered_mb_per_s,
            res.latency.line()
        ));
        if first_error.is_none() {
            first_error = sh.first_error.lock().unwrap().clone();
        }
        out.push(res);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(LargeReport {
        scenario: "large",
        sizes: out,
        first_error,
    })
}
