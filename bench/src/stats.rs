//! Clocks, latency histograms, and CPU/memory readings of this process and
//! of the server under test.

use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the benchmark started; senders embed it in each
/// message and receivers (the same process) subtract it from their own.
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One reading of the server process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcReading {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_secs: f64,
}

/// Reads `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat` (utime + stime)
/// of each server process and adds them up (several when the benchmark
/// drives a cluster); `None` without pids or when one cannot be read.
pub fn read_proc(pids: &[u32]) -> Option<ProcReading> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = ProcReading::default();
    for &pid in pids {
        let r = read_one(pid)?;
        sum.rss_kib += r.rss_kib;
        sum.hwm_kib += r.hwm_kib;
        sum.cpu_secs += r.cpu_secs;
    }
    Some(sum)
}

fn read_one(pid: u32) -> Option<ProcReading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ProcReading {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_secs: ticks / hz.max(1.0),
    })
}

/// CPU used by this process and by the server over one measured interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub wall_secs: f64,
    pub client_cpu_secs: f64,
    /// Client CPU as a share of one core over the interval (1.0 = one core busy).
    pub client_cpu_share: f64,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_share: Option<f64>,
}

/// Starts a CPU measurement; [`CpuMeter::stop`] gives the use since.
pub struct CpuMeter {
    start: Instant,
    client: f64,
    server: Option<f64>,
    pids: Vec<u32>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            start: Instant::now(),
            client: self_cpu_secs(),
            server: read_proc(pids).map(|r| r.cpu_secs),
            pids: pids.to_vec(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let client = self_cpu_secs() - self.client;
        let server = match (self.server, read_proc(&self.pids)) {
            (Some(a), Some(b)) => Some(b.cpu_secs - a),
            _ => None,
        };
        CpuUse {
            wall_secs: wall,
            client_cpu_secs: client,
            client_cpu_share: client / wall,
            server_cpu_secs: server,
            server_cpu_share: server.map(|s| s / wall),
        }
    }
}

impl CpuUse {
    pub fn line(&self) -> String {
        let server = match self.server_cpu_share {
            Some(s) => format!("server {:.0}% of a core", s * 100.0),
            None => "server CPU unknown (no --server-pid)".into(),
        };
        format!(
            "CPU over {:.1} s: load generator {:.0}% of a core, {server}",
            self.wall_secs,
            self.client_cpu_share * 100.0
        )
    }
}

/// Samples the server's RSS in the background and keeps the peak.
pub struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl RssSampler {
    pub fn start(pids: &[u32]) -> Self {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        if !pids.is_empty() {
            let peak = peak.clone();
            let pids = pids.to_vec();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
                // Bounded: ends when stopped or after an hour.
                for _ in 0..360_000 {
                    if let Some(r) = read_proc(&pids) {
                        peak.fetch_max(r.rss_kib, Ordering::Relaxed);
                    }
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = rx.changed() => break,
                    }
                }
            });
        }
        Self { peak, stop }
    }

    /// Peak RSS in KiB seen so far.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops sampling; the peak includes one last reading.
    pub fn stop(self, pids: &[u32]) -> u64 {
        let _ = self.stop.send(true);
        let last = read_proc(pids).map_or(0, |r| r.rss_kib);
        self.peak_kib().max(last)
    }
}
