//! What the benchmarks measure with: percentiles, durations for the report, resident memory, Redis
//! CPU and script time, and the `muster serve` process they drive.

use super::*;

/// Latency percentiles.
pub(crate) struct Percentiles {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

pub(crate) fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
    };
    Percentiles { p50: at(0.50), p99: at(0.99), max: samples.last().copied().unwrap_or_default() }
}

pub(crate) fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

/// Redis's own CPU time (user + system) so far, from `INFO cpu`.
pub(crate) fn redis_cpu(server: &RedisServer) -> Duration {
    let info = server.cli(&["info", "cpu"]);
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64(field("used_cpu_user") + field("used_cpu_sys"))
}

/// Time Redis spent in `EVALSHA` calls (Muster's scripts), from `INFO commandstats`.
pub(crate) fn muster_script_time(server: &RedisServer) -> Duration {
    let stats = server.cli(&["info", "commandstats"]);
    let micros = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .and_then(|fields| fields.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|usec| usec.parse().ok())
        .unwrap_or(0);
    Duration::from_micros(micros)
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resident set size of this process in KiB.
pub(crate) fn own_rss_kib() -> Result<u64, Box<dyn std::error::Error>> {
    Ok(rss_kib(std::process::id()).ok_or("no VmRSS in /proc/self/status")?)
}

/// Kills the server process when the benchmark ends, however it ends.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release `muster serve` (built next to this binary) on a free port: on the embedded
/// store, or on a fresh `redis-server` when `redis` is given.
pub(crate) fn spawn_server(
    redis: Option<&RedisServer>,
) -> Result<(Child, String), Box<dyn std::error::Error>> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?.with_file_name("muster");
    if !exe.exists() {
        return Err(
            format!("{} is missing: run `cargo build --release -p muster` first", exe.display()).into()
        );
    }
    let mut command = Command::new(exe);
    // Above the default connection cap (10,000): the fan-out runs 10,000 watchers and blocking
    // queries besides.
    command.args(["serve", "--listen", "127.0.0.1:0", "--max-connections", "100000"]);
    if let Some(redis) = redis {
        command.args(["--redis", &redis.url()]);
    }
    let mut child =
        Child(command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn()?);
    let mut first = String::new();
    std::io::BufReader::new(child.0.stdout.take().ok_or("no stdout")?).read_line(&mut first)?;
    let base =
        first.split_whitespace().find(|w| w.starts_with("http://")).ok_or("no address printed")?.to_owned();
    Ok((child, base))
}
