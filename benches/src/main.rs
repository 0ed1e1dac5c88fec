//! `cargo run --release -p benches -- [--quick] [--only CASE]...`
//!
//! Measures the same workloads, in one run on loopback, through a direct
//! connection, Routehub (QUIC and TCP tunnels), rathole (plain and noise)
//! and bore, all in front of the same backend. The tunnels' processes are
//! pinned to one CPU, the load generator and backend to the other. Writes a
//! table to the terminal and `results.json` + `chart.png` under
//! `<target dir>/bench-report/`.

mod admin;
mod backend;
mod chart;
mod deploys;
mod load;
mod procs;
mod propagation;
mod report;
mod sessions;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::report::{CaseResult, Report};
use crate::targets::{Binaries, CASES, Running};

#[derive(Parser)]
#[command(
    name = "benches",
    about = "Routehub side by side with a direct connection, rathole and bore"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// A few seconds per case instead of the full durations.
    #[arg(long)]
    quick: bool,
    /// Run only these cases (repeatable): direct, routehub-quic,
    /// routehub-tcp, rathole, rathole-noise, bore, propagation, sessions,
    /// deploy.
    #[arg(long)]
    only: Vec<String>,
    /// Where the report goes [default: <target dir>/bench-report].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Streams held open for the memory-per-stream figure.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Route changes for the propagation benchmark.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Containers for the deploy benchmark's ready-to-routed figure.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Idle relay sessions on one gateway [default: 10000, quick: 1000].
    #[arg(long)]
    sessions: Option<usize>,
}

#[derive(Subcommand)]
enum Sub {
    /// The backend server (started by the benchmark itself).
    #[command(hide = true)]
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Durations and sizes for one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub connections: usize,
    pub warmup_ms: u64,
    pub duration_ms: u64,
    pub fixed_rate: u64,
    pub fixed_rate_connections: usize,
    pub bulk_bytes: u64,
    pub new_connections: usize,
    pub streams: usize,
    pub changes: usize,
    pub sessions: usize,
    pub tunnel_cpus: String,
    pub load_cpus: String,
}

impl Plan {
    fn new(cli: &Cli) -> Plan {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (tunnel_cpus, load_cpus) = if cpus >= 2 { ("1", "0") } else { ("0", "0") };
        Plan {
            quick: cli.quick,
            connections: 64,
            warmup_ms: if cli.quick { 500 } else { 2000 },
            duration_ms: if cli.quick { 3000 } else { 20_000 },
            fixed_rate: 1000,
            fixed_rate_connections: 32,
            bulk_bytes: if cli.quick { 256 << 20 } else { 1 << 30 },
            new_connections: if cli.quick { 200 } else { 1000 },
            streams: cli.streams,
            changes: cli.changes,
            sessions: cli.sessions.unwrap_or(if cli.quick { 1000 } else { 10_000 }),
            tunnel_cpus: tunnel_cpus.into(),
            load_cpus: load_cpus.into(),
        }
    }
    fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }
    fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Backend { listen }) = cli.command {
        return backend::run_process(listen);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plan = Plan::new(&cli);
    // Before the runtime exists, so every thread inherits it.
    if let Err(e) = procs::pin_self(&plan.load_cpus) {
        eprintln!("warning: could not pin the load generator ({e:#}); results are noisier");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli, plan))
}

/// The report directory: `--out`, else `bench-report` in the target dir
/// this binary was built into.
fn report_dir(cli: &Cli) -> PathBuf {
    if let Some(out) = &cli.out {
        return out.clone();
    }
    let target = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench-report")
}

/// Starts the backend process pinned next to the load generator.
fn start_backend(cpus: &str) -> Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new("taskset")
        .args(["-c", cpus])
        .arg(exe)
        .args(["backend", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the backend")?;
    let stdout = child.stdout.take().context("backend stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("backend said {line:?}"))?;
    Ok((child, addr))
}

async fn run(cli: Cli, plan: Plan) -> Result<()> {
    let only: Vec<String> = cli.only.iter().flat_map(|o| o.split(',')).map(str::to_owned).collect();
    for o in &only {
        if !CASES.contains(&o.as_str()) && !["propagation", "sessions", "deploy"].contains(&o.as_str()) {
            bail!(
                "unknown case {o:?}; cases: {}, propagation, sessions, deploy",
                CASES.join(", ")
            );
        }
    }
    let wanted = |c: &str| only.is_empty() || only.iter().any(|o| o == c);
    let out_dir = report_dir(&cli);
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile::tempdir()?;
    let bins = Binaries::find();
    let (mut backend_child, backend) = start_backend(&plan.load_cpus)?;
    eprintln!(
        "backend on {backend}; tunnels pinned to CPU {}, load generator and backend to CPU {}{}",
        plan.tunnel_cpus,
        plan.load_cpus,
        if plan.quick { " (quick run)" } else { "" }
    );

    let mut report = Report::new(plan.clone());
    for case in CASES {
        let needs_for_prop = *case == "routehub-quic" && (wanted("propagation") || wanted("deploy"));
        if !wanted(case) && !needs_for_prop {
            continue;
        }
        let mut result = CaseResult::new(case);
        if let Some(why) = bins.missing(case) {
            eprintln!("[{case}] skipped: {why}");
            result.skipped = Some(why);
            report.cases.push(result);
            continue;
        }
        eprintln!("[{case}] starting");
        let running = match targets::start(case, &bins, backend, work.path(), &plan.tunnel_cpus).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("[{case}] failed to start: {e:#}");
                result.error = Some(format!("start: {e:#}"));
                report.cases.push(result);
                continue;
            }
        };
        if wanted(case) {
            measure(&running, &plan, &mut result).await;
            report.cases.push(result);
        }
        if needs_for_prop
            && wanted("deploy")
            && let Some((admin, token)) = &running.relay_admin
        {
            eprintln!(
                "[deploy] {} labelled containers, then a blue-green redeploy under load",
                cli.rounds
            );
            match deploys::run(&running.endpoint, *admin, token, cli.rounds).await {
                Ok(d) => report.deploy = Some(d),
                Err(e) => {
                    eprintln!("[deploy] failed: {e:#}");
                    report.deploy_error = Some(format!("{e:#}"));
                }
            }
        }
        if needs_for_prop
            && wanted("propagation")
            && let Some((admin, token)) = &running.relay_admin
        {
            eprintln!("[propagation] {} route changes", plan.changes);
            match propagation::run(&running.endpoint, *admin, token, backend, plan.changes).await {
                Ok(p) => report.propagation = Some(p),
                Err(e) => {
                    eprintln!("[propagation] failed: {e:#}");
                    report.propagation_error = Some(format!("{e:#}"));
                }
            }
        }
        drop(running);
    }
    if wanted("sessions") && plan.sessions > 0 {
        match &bins.routehub {
            Some(bin) => {
                eprintln!("[sessions] {} idle relay sessions on one gateway", plan.sessions);
                match sessions::run(bin, &work.path().join("sessions"), &plan.tunnel_cpus, plan.sessions).await {
                    Ok(s) => report.sessions = Some(s),
                    Err(e) => {
                        eprintln!("[sessions] failed: {e:#}");
                        report.sessions_error = Some(format!("{e:#}"));
                    }
                }
            }
            None => report.sessions_error = bins.missing("routehub-quic"),
        }
    }
    let _ = backend_child.kill();
    let _ = backend_child.wait();

    print!("{}", report.table());
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.to_json())?)?;
    let png_path = out_dir.join("chart.png");
    match chart::draw(&report, &png_path) {
        Ok(()) => println!("\nwrote {} and {}", json_path.display(), png_path.display()),
        Err(e) => println!("\nwrote {} (chart failed: {e:#})", json_path.display()),
    }
    Ok(())
}

/// Every workload on one running system; a failing workload is recorded
/// and the next one still runs.
async fn measure(running: &Running, plan: &Plan, result: &mut CaseResult) {
    let case = running.case.as_str();
    let ep = &running.endpoint;
    let pids = running.pids();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if !pids.is_empty() {
        result.rss_idle_bytes = Some(procs::total_rss(&pids));
    }

    // (f) memory with streams held open.
    if !pids.is_empty() && plan.streams > 0 {
        let before = procs::total_rss(&pids);
        match load::hold_streams(ep, plan.streams, Duration::from_secs(60)).await {
            Ok(held) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let with = procs::total_rss(&pids);
                result.rss_streams_bytes = Some(with);
                result.bytes_per_stream = Some((with.saturating_sub(before)) as f64 / held.len() as f64);
                drop(held);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => result.errors.push(format!("streams: {e:#}")),
        }
        eprintln!("[{case}] streams done");
    }

    // (a) + (e) closed loop, CPU of the tunnel processes in the window.
    let mut cpu = (Duration::ZERO, Duration::ZERO);
    let res = load::closed_loop(ep, plan.connections, plan.warmup(), plan.duration(), |start| {
        let t = procs::total_cpu(&pids);
        if start { cpu.0 = t } else { cpu.1 = t }
    })
    .await;
    match res {
        Ok(r) => {
            let rps = r.requests as f64 / r.elapsed.as_secs_f64();
            result.rps = Some(rps);
            result.rps_errors = r.errors;
            if !pids.is_empty() && r.requests > 0 {
                result.cpu_us_per_req = Some((cpu.1 - cpu.0).as_secs_f64() * 1e6 / r.requests as f64);
            }
            eprintln!("[{case}] {rps:.0} req/s ({} errors)", r.errors);
        }
        Err(e) => result.errors.push(format!("rps: {e:#}")),
    }

    // (b) fixed rate, open loop.
    match load::open_loop(
        ep,
        plan.fixed_rate,
        plan.fixed_rate_connections,
        plan.warmup(),
        plan.duration(),
    )
    .await
    {
        Ok((p, errors)) => {
            eprintln!(
                "[{case}] at {} req/s: p50 {:.0} µs, p99 {:.0} µs",
                plan.fixed_rate, p.p50_us, p.p99_us
            );
            result.fixed_rate = Some(p);
            result.fixed_rate_errors = errors;
        }
        Err(e) => result.errors.push(format!("fixed rate: {e:#}")),
    }

    // (c) bulk.
    match load::bulk(ep, plan.bulk_bytes).await {
        Ok(gbps) => {
            eprintln!("[{case}] bulk {gbps:.2} Gbit/s");
            result.bulk_gbps = Some(gbps);
        }
        Err(e) => result.errors.push(format!("bulk: {e:#}")),
    }

    // (d) new connection to first byte.
    match load::connect_latency(ep, plan.new_connections).await {
        Ok((p, errors)) => {
            eprintln!("[{case}] new connection p50 {:.0} µs, p99 {:.0} µs", p.p50_us, p.p99_us);
            result.connect = Some(p);
            result.connect_errors = errors;
        }
        Err(e) => result.errors.push(format!("connect: {e:#}")),
    }
    for e in &result.errors {
        eprintln!("[{case}] error: {e}");
    }
}
