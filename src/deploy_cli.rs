//! `routehub deploy …`: compose apps on a relay, through its admin API.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use relay::client::AdminClient;
use relay::deployer::Apply;
use relay::records::{DeployStatus, Deployment};
use serde_json::Value;

use crate::routes_cli::{AdminArgs, print_json, print_table};

/// How long the CLI follows a deployment before it leaves it running.
const FOLLOW_FOR: Duration = Duration::from_secs(2 * 3600);

#[derive(Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    command: DeployCommand,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum DeployCommand {
    /// Deploy a compose file (`-`: stdin) as a new version of NAME, beside
    /// what serves; waits until it is healthy, or failed and rolled back.
    Apply {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// `NAME=VALUE`, or `NAME` to take the value from this shell's
        /// environment: interpolated by compose (`${NAME}`), sealed at
        /// rest, never shown.
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Leave a failed version running, for a look.
        #[arg(long)]
        no_rollback: bool,
        /// Seconds every service has to become ready.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Answer at once; follow with `routehub deploy status NAME`.
        #[arg(long)]
        detach: bool,
    },
    /// Every compose, with the deployment that serves it.
    List,
    /// Deployments of NAME, newest first.
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// What changed between two versions of NAME's file.
    Diff { name: String, from: u64, to: u64 },
    /// Deploy an earlier version again (default: the one that served
    /// before), each service on the image it ran then.
    Rollback {
        name: String,
        version: Option<u64>,
        #[arg(long)]
        detach: bool,
    },
    /// The logs of NAME's containers.
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// NAME's deployment that serves, and its services now.
    Status { name: String },
    /// Take every generation of NAME down and forget it.
    Rm { name: String },
}

pub async fn run(args: DeployArgs) -> Result<()> {
    let api = args.admin.client()?;
    let json = args.admin.json;
    match args.command {
        DeployCommand::Apply {
            file,
            name,
            description,
            secrets,
            no_rollback,
            timeout,
            detach,
        } => {
            let yaml = read_file(&file)?;
            let apply = Apply {
                description,
                secrets: parse_secrets(&secrets)?,
                auto_rollback: !no_rollback,
                ready_timeout_secs: Some(timeout),
                ..Apply::new(&name, &yaml)
            };
            let d = api.apply(&apply).await?;
            follow(&api, d, detach, json).await?
        }
        DeployCommand::Rollback { name, version, detach } => {
            let d = api.rollback_compose(&name, version).await?;
            follow(&api, d, detach, json).await?
        }
        DeployCommand::List => {
            let composes = api.composes().await?;
            if json {
                return print_json(&Value::from(composes));
            }
            let rows: Vec<Vec<String>> = composes
                .iter()
                .map(|c| {
                    let live = &c["live"];
                    let serving = if live.is_null() {
                        "-".to_owned()
                    } else {
                        format!("v{} (deployment {})", live["version"], live["id"])
                    };
                    let last = match (&c["under_way"], &c["last"]) {
                        (Value::Number(id), _) => format!("deploying ({id})"),
                        (_, last) if !last.is_null() => text(&last["status"]),
                        _ => "-".into(),
                    };
                    vec![
                        text(&c["name"]),
                        c["version"].to_string(),
                        serving,
                        last,
                        text(&c["description"]),
                    ]
                })
                .collect();
            print_table(&["NAME", "VERSION", "SERVING", "LAST", "DESCRIPTION"], &rows);
        }
        DeployCommand::History { name, limit } => {
            let history = api.deployments(&name, limit).await?;
            if json {
                return print_json(&Value::from(history));
            }
            let rows: Vec<Vec<String>> = history
                .iter()
                .map(|d| {
                    vec![
                        d["id"].to_string(),
                        d["version"].to_string(),
                        text(&d["status"]),
                        text(&d["reason"]),
                        text(&d["actor"]),
                        text(&d["created_at"]),
                        text(&d["detail"]),
                    ]
                })
                .collect();
            print_table(&["ID", "VERSION", "STATUS", "WHY", "BY", "AT", "DETAIL"], &rows);
        }
        DeployCommand::Diff { name, from, to } => {
            let diff = api.diff(&name, from, to).await?;
            if diff.is_empty() {
                println!("versions {from} and {to} of {name} have the same file");
            } else {
                print!("{diff}");
            }
        }
        DeployCommand::Logs {
            name,
            follow,
            service,
            tail,
        } => {
            if !follow {
                for line in api.logs(&name, service.as_deref(), tail).await? {
                    println!("{line}");
                }
                return Ok(());
            }
            let mut body = api.follow_logs(&name, service.as_deref(), tail).await?;
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the log stream broke")?;
                let Ok(data) = frame.into_data() else { continue };
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    if let Some(text) = line.trim_end_matches('\n').strip_prefix("data: ") {
                        println!("{text}");
                    }
                }
            }
        }
        DeployCommand::Status { name } => {
            let status = api.compose_status(&name).await?;
            if json {
                return print_json(&status);
            }
            let c = &status["compose"];
            println!(
                "{} (version {}) {}",
                text(&c["name"]),
                c["version"],
                text(&c["description"])
            );
            match &status["live"] {
                Value::Null => println!("serving: nothing healthy"),
                live => println!(
                    "serving: version {} (deployment {}, {})",
                    live["version"],
                    live["id"],
                    text(&live["created_at"])
                ),
            }
            if let Value::Number(id) = &status["under_way"] {
                println!("deploying: deployment {id}");
            } else if let Some(last) = status["last"].as_object().filter(|l| l["status"] != "healthy") {
                println!(
                    "last deployment {}: {} {}",
                    last["id"],
                    text(&last["status"]),
                    text(&last["detail"])
                );
            }
            if let Some(e) = status["engine_error"].as_str() {
                println!("engine: {e}");
            }
            let rows: Vec<Vec<String>> = status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    vec![
                        text(&s["service"]),
                        text(&s["container"]),
                        text(&s["state"]),
                        s["restarts"].to_string(),
                    ]
                })
                .collect();
            print_table(&["SERVICE", "CONTAINER", "STATE", "RESTARTS"], &rows);
        }
        DeployCommand::Rm { name } => {
            api.remove_compose(&name).await?;
            println!("{name}: taken down and removed, with its versions and deployments");
        }
    }
    Ok(())
}

/// A JSON string as text (`-` for none).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn read_file(file: &std::path::Path) -> Result<String> {
    let limit = relay::deployer::MAX_COMPOSE_FILE as u64;
    let mut yaml = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(limit + 1)
            .read_to_string(&mut yaml)
            .context("reading the compose file from stdin")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit + 1).read_to_string(&mut yaml))
            .with_context(|| format!("reading {}", file.display()))?;
    }
    if yaml.len() as u64 > limit {
        bail!("{} is over {limit} bytes", file.display());
    }
    Ok(yaml)
}

/// `NAME=VALUE`, or `NAME` read from the environment.
fn parse_secrets(given: &[String]) -> Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => std::env::var(s)
                .map(|v| (s.clone(), v))
                .with_context(|| format!("--secret {s}: no {s} in the environment (or give {s}=VALUE)")),
        })
        .collect()
}

/// Prints a deployment as it goes, until it ends; fails unless healthy.
async fn follow(api: &AdminClient, d: Deployment, detach: bool, json: bool) -> Result<()> {
    if !json {
        println!(
            "deployment {} of {} (version {}, {}): {}",
            d.id,
            d.compose,
            d.version,
            d.reason,
            d.status.as_str()
        );
    }
    if detach {
        return if json {
            print_json(&serde_json::to_value(&d)?)
        } else {
            Ok(())
        };
    }
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let d = loop {
        let d = api.deployment(d.id).await?;
        if !json {
            for e in d.health.iter().skip(seen) {
                println!("  {} {}: {}", e.at, e.service, e.state);
            }
        }
        seen = d.health.len();
        if d.status.is_final() || tokio::time::Instant::now() >= deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if json {
        print_json(&serde_json::to_value(&d)?)?;
    } else {
        println!(
            "{}{}",
            d.status.as_str(),
            if d.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", d.detail)
            }
        );
    }
    match d.status {
        DeployStatus::Healthy => Ok(()),
        DeployStatus::Failed | DeployStatus::RolledBack => {
            if !json {
                eprintln!("--- compose output (the end) ---\n{}", tail_lines(&d.output, 30));
            }
            bail!("deployment {} {}", d.id, d.status.as_str())
        }
        _ => bail!(
            "deployment {} is still {}; see `routehub deploy status {}`",
            d.id,
            d.status.as_str(),
            d.compose
        ),
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
