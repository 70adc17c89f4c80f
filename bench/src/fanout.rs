//! `fanout` and `max`: S sessions × N users, every user sending paced
//! `send-message` to the whole room.
//!
//! Each connection is one lean task: it joins, then waits on the phase the
//! controller sets (rate, sending or not, stop), sends on its own timer with
//! a random phase offset, and checks every `new-message` it receives. The
//! message id carries `<step>.<sender>.<seq>.<send time µs>`, so latency and
//! per-sender order are measured without any other bookkeeping.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::common::{mix, payload, public_key, wait_until, Ctx, Member, SessionSpec, Ticker};
use crate::redis_stats::{self, RedisUse};
use crate::sio::{event_name, string_field, Client, Frame, JoinArgs, ID_FIELD};
use crate::stats::{latency_histogram, now_us, read_proc, record, CpuMeter, CpuUse, Latency};

/// What the controller tells every connection.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    step: u32,
    /// Messages per second per user.
    rate: f64,
    sending: bool,
    stop: bool,
}

/// Counters of the current step (reset when a step starts).
#[derive(Default)]
struct StepCounters {
    sent: AtomicU64,
    expected: AtomicU64,
    delivered: AtomicU64,
    stale: AtomicU64,
    order_violations: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    max_send_lag_us: AtomicU64,
}

impl StepCounters {
    fn reset(&self) {
        for c in [
            &self.sent,
            &self.expected,
            &self.delivered,
            &self.stale,
            &self.order_violations,
            &self.acks,
            &self.errors,
            &self.max_send_lag_us,
        ] {
            c.store(0, Relaxed);
        }
    }
}

struct Shared {
    users: u32,
    /// Connections joined per session; a send expects one delivery per other member.
    joined: Vec<AtomicU32>,
    ready: AtomicUsize,
    setup_failed: AtomicUsize,
    disconnects: AtomicU64,
    /// Deliveries of any step, ever (for quiescence checks).
    any_delivery: AtomicU64,
    step: StepCounters,
    /// Latencies of the current step, and of the current progress tick.
    hists: Mutex<Hists>,
    first_error: Mutex<Option<String>>,
}

struct Hists {
    step: Histogram<u64>,
    tick: Histogram<u64>,
}

impl Shared {
    fn note_error(&self, e: impl std::fmt::Display) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// Shape of a fanout population.
#[derive(Debug, Clone, Serialize)]
pub struct Population {
    pub sessions: usize,
    pub users: u32,
    pub payload_bytes: usize,
}

/// One measured step at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub per_user_rate: f64,
    /// Deliveries/s the step asked for (sends/s × (users − 1)).
    pub target_deliveries_per_s: f64,
    pub secs: f64,
    pub sent: u64,
    /// Sends actually made / sends the schedule asked for.
    pub send_ratio: f64,
    pub expected: u64,
    pub delivered: u64,
    pub delivery_ratio: f64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    pub order_violations: u64,
    pub errors: u64,
    pub stale: u64,
    pub max_send_lag_ms: f64,
    pub cpu: CpuUse,
    pub server_rss_kib: Option<u64>,
    /// Redis's commands and CPU over the step (with `--redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisUse>,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub population: Population,
    pub connections: usize,
    pub setup_failed: usize,
    pub setup_secs: f64,
    /// Redis's commands over the setup (reservations and joins; `--redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_redis: Option<RedisUse>,
    pub result: StepResult,
    pub disconnects: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MaxReport {
    pub scenario: &'static str,
    pub population: Population,
    pub connections: usize,
    pub setup_failed: usize,
    /// Redis's commands over the setup (reservations and joins; `--redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_redis: Option<RedisUse>,
    pub criteria: String,
    pub steps: Vec<StepResult>,
    /// Deliveries/s of the best passing step.
    pub sustainable_deliveries_per_s: f64,
    pub best: Option<StepResult>,
    pub stopped_because: String,
    pub disconnects: u64,
    pub first_error: Option<String>,
}

/// Pass criteria of one step.
#[derive(Debug, Clone, Copy)]
pub struct Criteria {
    pub min_delivery_ratio: f64,
    pub max_p99_ms: f64,
}

/// Joined connections waiting for phases.
struct Swarm {
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pop: Population,
    setup_secs: f64,
    setup_redis: Option<RedisUse>,
}

impl Swarm {
    /// Reserves, joins creators, then members; all connections stay open.
    async fn start(ctx: &Arc<Ctx>, pop: Population, tag: &str) -> Result<Self> {
        let redis_before = redis_snapshot(ctx).await;
        let sessions = ctx.sessions(tag, pop.sessions);
        ctx.reserve_all(&sessions).await?;
        let shared = Arc::new(Shared {
            users: pop.users,
            joined: (0..pop.sessions).map(|_| AtomicU32::new(0)).collect(),
            ready: AtomicUsize::new(0),
            setup_failed: AtomicUsize::new(0),
            disconnects: AtomicU64::new(0),
            any_delivery: AtomicU64::new(0),
            step: StepCounters::default(),
            hists: Mutex::new(Hists {
                step: latency_histogram(),
                tick: latency_histogram(),
            }),
            first_error: Mutex::new(None),
        });
        let (phase, _) = watch::channel(Phase::default());
        let sem = Arc::new(Semaphore::new(ctx.concurrency));
        let body: Arc<str> = payload(pop.payload_bytes).into();
        let started = Instant::now();
        let members = ctx.members(pop.sessions, pop.users);
        let mut tasks = Vec::with_capacity(members.len());
        let (creators, others): (Vec<_>, Vec<_>) = members.into_iter().partition(|m| m.is_creator);
        for (wave, group) in [creators, others].into_iter().enumerate() {
            let n = group.len();
            let before = shared.ready.load(Relaxed) + shared.setup_failed.load(Relaxed);
            for m in group {
                let s = sessions[m.session].clone();
                tasks.push(tokio::spawn(run_conn(
                    ctx.clone(),
                    shared.clone(),
                    m,
                    s,
                    phase.subscribe(),
                    sem.clone(),
                    body.clone(),
                )));
            }
            let target = before + n;
            let mut ticker = Ticker::new(&ctx.server_pids);
            let limit = Instant::now() + Duration::from_secs(300);
            while shared.ready.load(Relaxed) + shared.setup_failed.load(Relaxed) < target {
                if Instant::now() > limit {
                    bail!("joining took longer than 300 s");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                ctx.progress(format_args!(
                    "[setup] wave {} joined {}/{} failed {} | {}",
                    wave + 1,
                    shared.ready.load(Relaxed),
                    tasks.len(),
                    shared.setup_failed.load(Relaxed),
                    ticker.tick()
                ));
            }
        }
        let failed = shared.setup_failed.load(Relaxed);
        if failed > 0 {
            eprintln!(
                "warning: {failed} connections failed to join (first error: {})",
                shared.first_error.lock().unwrap().clone().unwrap_or_default()
            );
        }
        // Let the join broadcasts (user-joined, public-keys-updated) settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let setup_secs = started.elapsed().as_secs_f64();
        let setup_redis = redis_use_since(ctx, redis_before).await;
        Ok(Self {
            shared,
            phase,
            tasks,
            pop,
            setup_secs,
            setup_redis,
        })
    }

    fn connections(&self) -> usize {
        self.shared.ready.load(Relaxed)
    }

    /// Runs one step: send at `rate` per user for `secs`, then stop sending
    /// and wait up to `drain` for the deliveries still in flight.
    async fn step(
        &self,
        ctx: &Ctx,
        step: u32,
        rate: f64,
        secs: f64,
        drain: Duration,
        crit: Criteria,
    ) -> StepResult {
        let sh = &self.shared;
        sh.step.reset();
        {
            let mut h = sh.hists.lock().unwrap();
            h.step.reset();
            h.tick.reset();
        }
        let redis_before = redis_snapshot(ctx).await;
        let cpu = CpuMeter::start(&ctx.server_pids);
        self.phase.send_replace(Phase {
            step,
            rate,
            sending: true,
            stop: false,
        });
        let started = Instant::now();
        let mut ticker = Ticker::new(&ctx.server_pids);
        let (mut last_sent, mut last_deliv) = (0u64, 0u64);
        let mut last_t = Instant::now();
        let end = started + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            let dt = last_t.elapsed().as_secs_f64().max(1e-9);
            last_t = Instant::now();
            let sent = sh.step.sent.load(Relaxed);
            let deliv = sh.step.delivered.load(Relaxed);
            let p99 = {
                let h = &mut sh.hists.lock().unwrap().tick;
                let v = if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(0.99)
                };
                h.reset();
                v
            };
            let expected = sh.step.expected.load(Relaxed).max(1);
            ctx.progress(format_args!(
                "[step {step} {:>4.0}s] rate {rate:.2}/user/s | sent {:.0}/s deliv {:.0}/s ratio {:.4} p99(1s) {:.1} ms | {}",
                started.elapsed().as_secs_f64(),
                (sent - last_sent) as f64 / dt,
                (deliv - last_deliv) as f64 / dt,
                deliv as f64 / expected as f64,
                p99 as f64 / 1000.0,
                ticker.tick(),
            ));
            last_sent = sent;
            last_deliv = deliv;
        }
        let send_secs = started.elapsed().as_secs_f64();
        self.phase.send_replace(Phase {
            step,
            rate,
            sending: false,
            stop: false,
        });
        let st = &sh.step;
        wait_until(drain, || st.delivered.load(Relaxed) >= st.expected.load(Relaxed)).await;
        let cpu = cpu.stop();
        let redis = redis_use_since(ctx, redis_before).await;
        let latency = Latency::of(&sh.hists.lock().unwrap().step);
        let sent = st.sent.load(Relaxed);
        let expected = st.expected.load(Relaxed);
        let delivered = st.delivered.load(Relaxed);
        let connections = self.connections() as f64;
        let peers = (self.pop.users.saturating_sub(1)) as f64;
        let delivery_ratio = if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        };
        let pass = delivery_ratio >= crit.min_delivery_ratio
            && latency.p99_ms <= crit.max_p99_ms
            && st.errors.load(Relaxed) == 0
            && sh.disconnects.load(Relaxed) == 0;
        StepResult {
            per_user_rate: rate,
            target_deliveries_per_s: rate * connections * peers,
            secs: send_secs,
            sent,
            send_ratio: sent as f64 / (rate * connections * send_secs).max(1e-9),
            expected,
            delivered,
            delivery_ratio,
            deliveries_per_s: delivered as f64 / send_secs,
            latency,
            order_violations: st.order_violations.load(Relaxed),
            errors: st.errors.load(Relaxed),
            stale: st.stale.load(Relaxed),
            max_send_lag_ms: st.max_send_lag_us.load(Relaxed) as f64 / 1000.0,
            cpu,
            server_rss_kib: read_proc(&ctx.server_pids).map(|r| r.rss_kib),
            redis,
            pass,
        }
    }

    /// Waits until deliveries stop arriving (after an overloaded step).
    async fn quiesce(&self, limit: Duration) {
        let end = Instant::now() + limit;
        let mut last = self.shared.any_delivery.load(Relaxed);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.shared.any_delivery.load(Relaxed);
            if now == last {
                return;
            }
            last = now;
        }
    }

    async fn stop(self) {
        self.phase.send_replace(Phase {
            stop: true,
            ..Phase::default()
        });
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    fn first_error(&self) -> Option<String> {
        self.shared.first_error.lock().unwrap().clone()
    }
}

/// Redis's counters now (with `--redis`; a failed reading is a warning).
async fn redis_snapshot(ctx: &Ctx) -> Option<redis_stats::Snapshot> {
    match redis_stats::snapshot(ctx.redis?).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: {e:#}");
            None
        }
    }
}

/// What Redis did since `before`.
async fn redis_use_since(ctx: &Ctx, before: Option<redis_stats::Snapshot>) -> Option<RedisUse> {
    let before = before?;
    redis_snapshot(ctx).await.map(|after| before.until(&after))
}

/// Most frames handled in one wake-up of a connection's task.
const MAX_BURST: usize = 256;

/// One connection for its whole life.
async fn run_conn(
    ctx: Arc<Ctx>,
    sh: Arc<Shared>,
    m: Member,
    session: Arc<SessionSpec>,
    mut phase_rx: watch::Receiver<Phase>,
    sem: Arc<Semaphore>,
    body: Arc<str>,
) {
    let joined = async {
        let _permit = sem.acquire().await?;
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
    }
    .await;
    let mut c = match joined {
        Ok(c) => c,
        Err(e) => {
            sh.setup_failed.fetch_add(1, Relaxed);
            sh.note_error(format!("join: {e:#}"));
            return;
        }
    };
    sh.joined[m.session].fetch_add(1, Relaxed);
    sh.ready.fetch_add(1, Relaxed);

    let prefix = format!(
        r#"42["send-message",{{"sessionId":"{}:{}","from":"{}","to":"all","encrypted":"{}","type":"text","clientMessageId":""#,
        session.id, session.key, m.user_id, body
    );
    let base = m.session as u32 * sh.users;
    let mut last_seq = vec![0u64; sh.users as usize];
    let mut seq = 0u64;
    let mut rng = mix(m.global as u64 ^ 0xA5A5);
    let mut cur = Phase::default();
    let mut period: Option<Duration> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let mut next = far();
    let sleep = tokio::time::sleep_until(next);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = *phase_rx.borrow_and_update();
                if p.stop {
                    break;
                }
                let restart = p.step != cur.step || p.rate != cur.rate || (p.sending && !cur.sending);
                cur = p;
                if p.sending && p.rate > 0.0 {
                    if restart {
                        let per = Duration::from_secs_f64(1.0 / p.rate);
                        period = Some(per);
                        rng = mix(rng);
                        // A random phase within one period spreads the senders out.
                        next = tokio::time::Instant::now() + per.mul_f64((rng % 10_000) as f64 / 10_000.0);
                        sleep.as_mut().reset(next);
                    }
                } else {
                    period = None;
                    next = far();
                    sleep.as_mut().reset(next);
                }
            }
            frame = c.next_frame() => {
                // Handle the whole burst already buffered in one wake-up.
                let mut frame = frame;
                for _ in 0..MAX_BURST {
                    match frame {
                        Frame::Event(t) => on_event(&sh, &cur, base, &mut last_seq, t.as_str()),
                        Frame::Ping => {
                            if let Err(e) = c.send_text("3".to_owned()).await {
                                sh.disconnects.fetch_add(1, Relaxed);
                                sh.note_error(format!("pong: {e:#}"));
                                return;
                            }
                        }
                        Frame::Closed(why) => {
                            sh.disconnects.fetch_add(1, Relaxed);
                            sh.note_error(format!("disconnected: {why}"));
                            return;
                        }
                    }
                    match c.try_next_frame() {
                        Some(f) => frame = f,
                        None => break,
                    }
                }
            }
            _ = &mut sleep, if period.is_some() => {
                let per = period.unwrap_or(Duration::from_secs(1));
                let now = tokio::time::Instant::now();
                let lag = now.saturating_duration_since(next).as_micros() as u64;
                sh.step.max_send_lag_us.fetch_max(lag, Relaxed);
                seq += 1;
                let mut text = String::with_capacity(prefix.len() + 48);
                text.push_str(&prefix);
                let _ = write!(text, "{}.{}.{}.{}\"}}]", cur.step, m.global, seq, now_us());
                let peers = sh.joined[m.session].load(Relaxed).saturating_sub(1) as u64;
                sh.step.sent.fetch_add(1, Relaxed);
                sh.step.expected.fetch_add(peers, Relaxed);
                if let Err(e) = c.send_text(text).await {
                    sh.disconnects.fetch_add(1, Relaxed);
                    sh.note_error(format!("send: {e:#}"));
                    return;
                }
                next += per;
                sleep.as_mut().reset(next);
            }
        }
    }
    c.close().await;
}

/// Checks one received event.
fn on_event(sh: &Shared, cur: &Phase, base: u32, last_seq: &mut [u64], t: &str) {
    match event_name(t) {
        Some("new-message") => {
            sh.any_delivery.fetch_add(1, Relaxed);
            let Some(id) = string_field(t, ID_FIELD) else {
                sh.step.errors.fetch_add(1, Relaxed);
                sh.note_error("new-message without an id");
                return;
            };
            let mut it = id.split('.').map(|p| p.parse::<u64>().unwrap_or(u64::MAX));
            let (Some(step), Some(sender), Some(seq), Some(ts)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                sh.step.errors.fetch_add(1, Relaxed);
                sh.note_error(format!("new-message with a foreign id {id:?}"));
                return;
            };
            if step != cur.step as u64 {
                sh.step.stale.fetch_add(1, Relaxed);
                return;
            }
            let latency = now_us().saturating_sub(ts);
            sh.step.delivered.fetch_add(1, Relaxed);
            {
                let mut h = sh.hists.lock().unwrap();
                record(&mut h.step, latency);
                record(&mut h.tick, latency);
            }
            let local = sender.wrapping_sub(base as u64) as usize;
            if let Some(last) = last_seq.get_mut(local) {
                if seq <= *last {
                    sh.step.order_violations.fetch_add(1, Relaxed);
                } else {
                    *last = seq;
                }
            } else {
                sh.step.errors.fetch_add(1, Relaxed);
                sh.note_error("new-message from another session");
            }
        }
        Some("message-sent") => {
            sh.step.acks.fetch_add(1, Relaxed);
        }
        Some("session-error") | Some("event-error") => {
            sh.step.errors.fetch_add(1, Relaxed);
            sh.note_error(t.chars().take(300).collect::<String>());
        }
        _ => {}
    }
}

pub struct FanoutArgs {
    pub pop: Population,
    pub rate: f64,
    pub secs: f64,
    pub drain: Duration,
    pub crit: Criteria,
}

pub async fn fanout(ctx: Arc<Ctx>, a: FanoutArgs) -> Result<FanoutReport> {
    let swarm = Swarm::start(&ctx, a.pop.clone(), "f").await?;
    let result = swarm.step(&ctx, 1, a.rate, a.secs, a.drain, a.crit).await;
    let report = FanoutReport {
        scenario: "fanout",
        population: a.pop,
        connections: swarm.connections(),
        setup_failed: swarm.shared.setup_failed.load(Relaxed),
        setup_secs: swarm.setup_secs,
        setup_redis: swarm.setup_redis.clone(),
        result,
        disconnects: swarm.shared.disconnects.load(Relaxed),
        first_error: swarm.first_error(),
    };
    swarm.stop().await;
    Ok(report)
}

pub struct MaxArgs {
    pub pop: Population,
    /// Deliveries/s of the first step.
    pub start: f64,
    pub factor: f64,
    pub step_secs: f64,
    pub max_steps: u32,
    /// Bisection steps after the first failure.
    pub refine: u32,
    pub drain: Duration,
    pub crit: Criteria,
}

pub async fn max(ctx: Arc<Ctx>, a: MaxArgs) -> Result<MaxReport> {
    let swarm = Swarm::start(&ctx, a.pop.clone(), "m").await?;
    let conns = swarm.connections().max(1) as f64;
    let peers = (a.pop.users.saturating_sub(1)).max(1) as f64;
    let per_user = |deliveries: f64| deliveries / (conns * peers);
    let mut steps: Vec<StepResult> = Vec::new();
    let mut best: Option<StepResult> = None;
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut target = a.start;
    let mut refined = 0;
    let mut stopped = format!("step limit ({}) reached", a.max_steps);
    for step in 1..=a.max_steps {
        let r = swarm
            .step(&ctx, step, per_user(target), a.step_secs, a.drain, a.crit)
            .await;
        ctx.progress(format_args!(
            "[max] step {step}: target {target:.0} deliv/s -> {:.0} deliv/s, ratio {:.5}, p99 {:.1} ms, client cpu {:.0}% => {}",
            r.deliveries_per_s,
            r.delivery_ratio,
            r.latency.p99_ms,
            r.cpu.client_cpu_share * 100.0,
            if r.pass { "pass" } else { "FAIL" }
        ));
        let pass = r.pass;
        if pass
            && best
                .as_ref()
                .is_none_or(|b| r.deliveries_per_s > b.deliveries_per_s)
        {
            best = Some(r.clone());
        }
        steps.push(r);
        if swarm.shared.disconnects.load(Relaxed) > 0 {
            stopped = "connections were lost".into();
            break;
        }
        if pass {
            lo = Some(target);
        } else {
            hi = Some(target);
            swarm.quiesce(Duration::from_secs(30)).await;
        }
        if hi.is_some() {
            if refined >= a.refine {
                stopped = "criteria failed; refinement done".into();
                break;
            }
            refined += 1;
        }
        target = match (lo, hi) {
            (Some(l), None) => l * a.factor,
            (Some(l), Some(h)) => (l + h) / 2.0,
            (None, Some(h)) => h / a.factor,
            (None, None) => target,
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = MaxReport {
        scenario: "max",
        population: a.pop,
        connections: swarm.connections(),
        setup_failed: swarm.shared.setup_failed.load(Relaxed),
        setup_redis: swarm.setup_redis.clone(),
        criteria: format!(
            "delivery ratio >= {}, p99 <= {} ms, no errors",
            a.crit.min_delivery_ratio, a.crit.max_p99_ms
        ),
        sustainable_deliveries_per_s: best.as_ref().map_or(0.0, |b| b.deliveries_per_s),
        best,
        steps,
        stopped_because: stopped,
        disconnects: swarm.shared.disconnects.load(Relaxed),
        first_error: swarm.first_error(),
    };
    swarm.stop().await;
    Ok(report)
}
