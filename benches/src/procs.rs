//! Child processes (pinned with `taskset`, killed on drop) and what
//! `/proc` says about them: CPU time and resident memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args` pinned to `cpus` (a taskset list like "1"),
    /// stdout and stderr to `log`, with `RUST_LOG=warn` so no tunnel pays
    /// for per-request logging.
    pub fn spawn(name: &str, cpus: Option<&str>, program: &Path, args: &[String], log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited (with the end of its log).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }

    /// Waits until the log contains `needle`; returns the rest of that line.
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                let at = line.find(needle).unwrap_or(0) + needle.len();
                return Ok(line[at..].trim().to_owned());
            }
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not log {needle:?} within {within:?}", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of a process so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(Duration::from_secs_f64((utime + stime) as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    // USER_HZ: 100 on every Linux architecture Routehub targets.
    100
}

/// Resident set size in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Sum over `pids`.
pub fn total_cpu(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| cpu_time(*p).ok()).sum()
}

/// Sum over `pids`.
pub fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss(*p).ok()).sum()
}

/// Pins the calling process (all its threads, present and future) to `cpus`.
pub fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("taskset -p {cpus} failed");
    }
    Ok(())
}

/// A free TCP port on loopback (also free for UDP, checked).
pub fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}
