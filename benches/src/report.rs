//! Results: the terminal table (with ratios against the direct connection
//! and against rathole) and the JSON document.

use std::fmt::Write;

use serde::Serialize;

use crate::Plan;
use crate::deploys::DeployBench;
use crate::load::Percentiles;
use crate::propagation::Propagation;
use crate::sessions::Sessions;

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub carries: &'static str,
    pub skipped: Option<String>,
    pub error: Option<String>,
    pub errors: Vec<String>,
    /// (a) requests/s, 612-byte responses, closed loop.
    pub rps: Option<f64>,
    pub rps_errors: u64,
    /// (e) CPU time of the tunnel processes per request of (a).
    pub cpu_us_per_req: Option<f64>,
    /// (b) latency at a fixed rate.
    pub fixed_rate: Option<Percentiles>,
    pub fixed_rate_errors: u64,
    /// (c) one bulk download.
    pub bulk_gbps: Option<f64>,
    /// (d) new connection to first response byte.
    pub connect: Option<Percentiles>,
    pub connect_errors: u64,
    /// (f) resident memory of the tunnel processes.
    pub rss_idle_bytes: Option<u64>,
    pub rss_streams_bytes: Option<u64>,
    pub bytes_per_stream: Option<f64>,
}

impl CaseResult {
    pub fn new(case: &str) -> Self {
        CaseResult {
            case: case.into(),
            carries: crate::targets::carries(case),
            skipped: None,
            error: None,
            errors: Vec::new(),
            rps: None,
            rps_errors: 0,
            cpu_us_per_req: None,
            fixed_rate: None,
            fixed_rate_errors: 0,
            bulk_gbps: None,
            connect: None,
            connect_errors: 0,
            rss_idle_bytes: None,
            rss_streams_bytes: None,
            bytes_per_stream: None,
        }
    }
}

pub struct Report {
    pub plan: Plan,
    pub cases: Vec<CaseResult>,
    pub propagation: Option<Propagation>,
    pub propagation_error: Option<String>,
    pub deploy: Option<DeployBench>,
    pub deploy_error: Option<String>,
    pub sessions: Option<Sessions>,
    pub sessions_error: Option<String>,
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

impl Report {
    pub fn new(plan: Plan) -> Self {
        Report {
            plan,
            cases: Vec::new(),
            propagation: None,
            propagation_error: None,
            deploy: None,
            deploy_error: None,
            sessions: None,
            sessions_error: None,
        }
    }

    fn get(&self, case: &str) -> Option<&CaseResult> {
        self.cases
            .iter()
            .find(|c| c.case == case && c.skipped.is_none() && c.error.is_none())
    }

    /// p99 at the fixed rate minus the direct connection's.
    pub fn added_p99_us(&self, c: &CaseResult) -> Option<f64> {
        let direct = self.get("direct")?.fixed_rate?.p99_us;
        Some(c.fixed_rate?.p99_us - direct)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        let _ = writeln!(
            out,
            "\nRoutehub benchmarks ({} run, loopback; tunnel processes pinned to CPU {}, load generator + backend to CPU {})",
            if p.quick { "quick" } else { "full" },
            p.tunnel_cpus,
            p.load_cpus
        );
        let _ = writeln!(
            out,
            "(a) {} connections x {} s, 612-byte responses; (b) {} req/s open loop, {} s, CO-corrected; (c) {} MiB download; (d) {} new connections; (e) tunnel CPU per request of (a); (f) RSS of tunnel processes, idle and with {} streams\n",
            p.connections,
            p.duration_ms / 1000,
            p.fixed_rate,
            p.duration_ms / 1000,
            p.bulk_bytes >> 20,
            p.new_connections,
            p.streams
        );
        let d = self.get("direct");
        let r = self.get("rathole");
        let rows: Vec<&CaseResult> = self.cases.iter().collect();

        let header = [
            "case", "req/s", "/direct", "/rathole", "p50 us", "p99 us", "p99.9 us", "+p99 us", "Gbit/s", "/direct",
            "/rathole",
        ];
        let mut lines = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        for c in &rows {
            if let Some(why) = c.skipped.as_ref().or(c.error.as_ref()) {
                lines.push(vec![c.case.clone(), format!("not measured: {}", first_line(why))]);
                continue;
            }
            let f = c.fixed_rate;
            lines.push(vec![
                c.case.clone(),
                num(c.rps, 0),
                ratio(c.rps, d.and_then(|d| d.rps)),
                ratio(c.rps, r.and_then(|r| r.rps)),
                num(f.map(|f| f.p50_us), 0),
                num(f.map(|f| f.p99_us), 0),
                num(f.map(|f| f.p999_us), 0),
                num(self.added_p99_us(c), 0),
                num(c.bulk_gbps, 2),
                ratio(c.bulk_gbps, d.and_then(|d| d.bulk_gbps)),
                ratio(c.bulk_gbps, r.and_then(|r| r.bulk_gbps)),
            ]);
        }
        render(&mut out, &lines);
        out.push('\n');

        let header = [
            "case",
            "conn p50 us",
            "conn p99 us",
            "/rathole p99",
            "CPU us/req",
            "/rathole",
            "RSS idle KiB",
            "/rathole",
            "RSS streams KiB",
            "B/stream",
        ];
        let mut lines = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        let kib = |v: Option<u64>| v.map(|v| v as f64 / 1024.0);
        for c in &rows {
            if c.skipped.is_some() || c.error.is_some() {
                continue;
            }
            let cp = c.connect;
            lines.push(vec![
                c.case.clone(),
                num(cp.map(|p| p.p50_us), 0),
                num(cp.map(|p| p.p99_us), 0),
                ratio(cp.map(|p| p.p99_us), r.and_then(|r| r.connect).map(|p| p.p99_us)),
                num(c.cpu_us_per_req, 1),
                ratio(c.cpu_us_per_req, r.and_then(|r| r.cpu_us_per_req)),
                num(kib(c.rss_idle_bytes), 0),
                ratio(kib(c.rss_idle_bytes), r.and_then(|r| kib(r.rss_idle_bytes))),
                num(kib(c.rss_streams_bytes), 0),
                num(c.bytes_per_stream, 0),
            ]);
        }
        render(&mut out, &lines);
        out.push('\n');
        for c in &self.cases {
            let _ = writeln!(out, "{:<14} {}", c.case, c.carries);
        }
        for c in &self.cases {
            let errs = c.rps_errors + c.fixed_rate_errors + c.connect_errors;
            if errs > 0 || !c.errors.is_empty() {
                let _ = writeln!(
                    out,
                    "{}: {} request errors (a {}, b {}, d {}) {}",
                    c.case,
                    errs,
                    c.rps_errors,
                    c.fixed_rate_errors,
                    c.connect_errors,
                    c.errors.join("; ")
                );
            }
        }
        if let Some(pr) = &self.propagation {
            let _ = writeln!(
                out,
                "\nPropagation (relay admin API change -> first request routed by the gateway), {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} not seen within 5 s (admin call alone: p50 {:.1} ms)",
                pr.changes,
                pr.visible.p50_us / 1000.0,
                pr.visible.p99_us / 1000.0,
                pr.visible.max_us / 1000.0,
                pr.failed,
                pr.admin_call.p50_us / 1000.0
            );
        }
        if let Some(e) = &self.propagation_error {
            let _ = writeln!(out, "\nPropagation failed: {e}");
        }
        if let Some(d) = &self.deploy {
            let _ = writeln!(
                out,
                "\nDeployments: container healthy -> first request routed through the gateway, {} containers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                d.rounds,
                d.ready_to_routed.p50_us / 1000.0,
                d.ready_to_routed.p99_us / 1000.0,
                d.ready_to_routed.max_us / 1000.0
            );
            let _ = writeln!(
                out,
                "Blue-green redeploy under load ({LOAD} connections): {} failed requests; {} requests during the switch ({:.1} s apply -> old generation stopped, +1 s), p50 {:.2} ms, p99 {:.2} ms (before: p50 {:.2} ms, p99 {:.2} ms)",
                d.failed,
                d.switch_requests,
                d.redeploy_secs,
                d.switch_latency.p50_us / 1000.0,
                d.switch_latency.p99_us / 1000.0,
                d.before_latency.p50_us / 1000.0,
                d.before_latency.p99_us / 1000.0,
                LOAD = crate::deploys::LOAD_CONNECTIONS
            );
        }
        if let Some(e) = &self.deploy_error {
            let _ = writeln!(out, "\nDeployments not measured: {e}");
        }
        if let Some(s) = &self.sessions {
            let _ = writeln!(
                out,
                "Idle relay sessions on one gateway (QUIC, one route each): {} of {} up ({} after 3 s of heartbeats), set up in {:.1} s; gateway RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per session",
                s.established,
                s.requested,
                s.alive_after_hold,
                s.setup_secs,
                s.gateway_rss_before as f64 / 1048576.0,
                s.gateway_rss_with as f64 / 1048576.0,
                s.bytes_per_session / 1024.0
            );
        }
        if let Some(e) = &self.sessions_error {
            let _ = writeln!(out, "Idle sessions not measured: {e}");
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let cases: Vec<serde_json::Value> = self
            .cases
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                let d = self.get("direct");
                let r = self.get("rathole");
                let rel = |val: Option<f64>, base: Option<f64>| match (val, base) {
                    (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                    _ => None,
                };
                v["added_p99_us"] = serde_json::json!(self.added_p99_us(c));
                v["rps_vs_direct"] = serde_json::json!(rel(c.rps, d.and_then(|d| d.rps)));
                v["rps_vs_rathole"] = serde_json::json!(rel(c.rps, r.and_then(|r| r.rps)));
                v["bulk_vs_direct"] = serde_json::json!(rel(c.bulk_gbps, d.and_then(|d| d.bulk_gbps)));
                v["bulk_vs_rathole"] = serde_json::json!(rel(c.bulk_gbps, r.and_then(|r| r.bulk_gbps)));
                v["cpu_vs_rathole"] = serde_json::json!(rel(c.cpu_us_per_req, r.and_then(|r| r.cpu_us_per_req)));
                v
            })
            .collect();
        serde_json::json!({
            "plan": self.plan,
            "cases": cases,
            "propagation": self.propagation,
            "propagation_error": self.propagation_error,
            "deploy": self.deploy,
            "deploy_error": self.deploy_error,
            "sessions": self.sessions,
            "sessions_error": self.sessions_error,
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Left-aligned first column, right-aligned numbers.
fn render(out: &mut String, lines: &[Vec<String>]) {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for l in lines {
        if l.len() == cols {
            for (i, cell) in l.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    for (n, l) in lines.iter().enumerate() {
        let mut line = String::new();
        for (i, cell) in l.iter().enumerate() {
            if i == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[0]);
            } else if l.len() < cols {
                let _ = write!(line, "  {cell}");
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if n == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (cols.saturating_sub(1));
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
}
