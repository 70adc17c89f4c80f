//! The process figures that Prometheus client libraries export under these
//! names (`process_*`), read from `/proc` at each scrape and written in the
//! text format directly: the `metrics` facade has only integer counters, and
//! CPU seconds are fractional.
//!
//! Linux only; elsewhere, and for any figure `/proc` does not give, the
//! family is left out.

use std::fmt::Write;

use super::{Family, Kind};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every
/// architecture Linux runs this server on (a kernel ABI constant, not
/// `CONFIG_HZ`), so it is not asked of `sysconf`.
const USER_HZ: f64 = 100.0;

/// What `/proc` says of this process.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
    threads: Option<u64>,
}

/// The families, in the order of [`Figures::values`]. Nothing is zeroed at
/// start-up: they are read at every scrape.
pub const PROCESS_FAMILIES: &[Family] = &[
    Family {
        name: "process_cpu_seconds_total",
        kind: Kind::Counter,
        help: "Total user and system CPU time spent in seconds.",
        series: &[],
    },
    Family {
        name: "process_resident_memory_bytes",
        kind: Kind::Gauge,
        help: "Resident memory size in bytes.",
        series: &[],
    },
    Family {
        name: "process_virtual_memory_bytes",
        kind: Kind::Gauge,
        help: "Virtual memory size in bytes.",
        series: &[],
    },
    Family {
        name: "process_open_fds",
        kind: Kind::Gauge,
        help: "Number of open file descriptors.",
        series: &[],
    },
    Family {
        name: "process_max_fds",
        kind: Kind::Gauge,
        help: "Maximum number of open file descriptors (the soft limit; raise it above MAX_CONNECTIONS).",
        series: &[],
    },
    Family {
        name: "process_start_time_seconds",
        kind: Kind::Gauge,
        help: "Start time of the process since the Unix epoch in seconds.",
        series: &[],
    },
    Family {
        name: "process_threads",
        kind: Kind::Gauge,
        help: "Number of OS threads in the process.",
        series: &[],
    },
];

impl Figures {
    /// The figures in the order of [`PROCESS_FAMILIES`].
    fn values(&self) -> [Option<f64>; 7] {
        let float = |v: Option<u64>| v.map(|v| v as f64);
        [
            self.cpu_seconds,
            float(self.resident_bytes),
            float(self.virtual_bytes),
            float(self.open_fds),
            float(self.max_fds),
            self.start_time_seconds,
            float(self.threads),
        ]
    }
}

/// Appends every figure that can be read now, with its `# HELP` and `# TYPE`.
pub fn render(out: &mut String) {
    for (family, value) in PROCESS_FAMILIES.iter().zip(read().values()) {
        if let Some(value) = value {
            let (name, kind, help) = (family.name, family.kind.as_str(), family.help);
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    }
}

fn read() -> Figures {
    let mut f = Figures::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        parse_stat(&stat, &mut f);
        if let (Some(ticks), Ok(system)) = (f.start_time_seconds, std::fs::read_to_string("/proc/stat")) {
            f.start_time_seconds = boot_time(&system).map(|boot| boot + ticks);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        f.resident_bytes = status_kib(&status, "VmRSS:").map(|kib| kib * 1024);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        f.max_fds = max_open_files(&limits);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // Less the descriptor of the listing itself.
        f.open_fds = Some((dir.count() as u64).saturating_sub(1));
    }
    f
}

/// Fields of `/proc/self/stat` (proc(5)); `start_time_seconds` is left in
/// seconds since boot.
fn parse_stat(stat: &str, f: &mut Figures) {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from its closing parenthesis, the last one in the line.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        f.cpu_seconds = Some((utime + stime) as f64 / USER_HZ);
    }
    f.threads = field(20);
    f.start_time_seconds = field(22).map(|ticks| ticks as f64 / USER_HZ);
    f.virtual_bytes = field(23);
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn boot_time(system: &str) -> Option<f64> {
    system
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Name:   123 kB` line of `/proc/self/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits` (none when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "4242 (a b) (c)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 125 0 0 20 0 7 0 \
                    12345 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let mut f = Figures::default();
        parse_stat(stat, &mut f);
        assert_eq!(f.cpu_seconds, Some(3.75));
        assert_eq!(f.threads, Some(7));
        assert_eq!(f.start_time_seconds, Some(123.45));
        assert_eq!(f.virtual_bytes, Some(104_857_600));
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status = "Name:\tx\nVmSize:\t  3892 kB\nVmRSS:\t    2180 kB\nThreads:\t1\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2180));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                40000                files\n";
        assert_eq!(max_open_files(limits), Some(20000));
        let unlimited = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1796624342\nprocesses 9\n"),
            Some(1_796_624_342.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_every_figure() {
        let f = read();
        assert!(f.resident_bytes.unwrap() > 0, "{f:?}");
        assert!(f.virtual_bytes.unwrap() >= f.resident_bytes.unwrap(), "{f:?}");
        assert!(f.open_fds.unwrap() >= 3, "{f:?}");
        assert!(f.max_fds.unwrap() >= f.open_fds.unwrap(), "{f:?}");
        assert!(f.threads.unwrap() >= 1, "{f:?}");
        assert!(f.cpu_seconds.unwrap() >= 0.0, "{f:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = f.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        let mut out = String::new();
        render(&mut out);
        assert_eq!(out.matches("# HELP process_").count(), 7, "{out}");
    }
}
