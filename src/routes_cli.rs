//! `routehub routes …`: the relay's admin API from the command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use relay::client::{AdminClient, find_token};
use relay::model::{ChangeAction, HealthCheck, NewRoute, Route, RoutePatch};
use serde_json::Value;

/// How the relay CLIs reach the relay's admin API.
#[derive(Args)]
pub struct AdminArgs {
    /// The relay's admin API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7070")]
    admin: String,
    /// Admin token file [default: admin.token in the relay's data dir].
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The relay's data dir, to find its admin token.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

impl AdminArgs {
    pub fn client(&self) -> Result<AdminClient> {
        let token = find_token(self.token_file.as_deref(), self.data_dir.as_deref())?;
        Ok(AdminClient::new(&self.admin, token))
    }
}

#[derive(Args)]
pub struct RoutesArgs {
    #[command(subcommand)]
    command: RoutesCommand,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Every route, with its target and state.
    List,
    /// Add a route; returns once the gateways have it.
    Add {
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// `http://host:port`, or a bare port on 127.0.0.1.
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Check the target with GET on this path.
        #[arg(long)]
        health_path: Option<String>,
        /// Seconds between health checks.
        #[arg(long, default_value_t = 10)]
        health_interval: u64,
        /// Access policy as JSON (enforced by the gateway).
        #[arg(long)]
        policy: Option<String>,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a route, by id or `host[/path]`.
    Rm { route: String },
    /// Change a route, by id or `host[/path]`.
    Edit {
        route: String,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        priority: Option<i32>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long)]
        health_path: Option<String>,
        #[arg(long, conflicts_with = "health_path")]
        no_health: bool,
        #[arg(long)]
        policy: Option<String>,
    },
    /// Recent changes, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Make the routes what they were at a version.
    Rollback { version: u64 },
}

pub async fn run(args: RoutesArgs) -> Result<()> {
    let api = args.admin.client()?;
    let json = args.admin.json;
    match args.command {
        RoutesCommand::List => {
            let routes = api.routes().await?;
            let health = api.health().await.unwrap_or_default();
            if json {
                return print_json(&serde_json::to_value(&routes)?);
            }
            let status = api.status().await.unwrap_or_default();
            let refusals = refusals(&status);
            let rows: Vec<Vec<String>> = routes
                .iter()
                .map(|r| {
                    let refused = refusals.get(&r.id);
                    let state = match (r.enabled, refused, health.iter().find(|h| h.route_id == r.id)) {
                        (false, _, _) => "disabled".to_owned(),
                        (true, Some(why), _) => format!("refused ({})", why.join("; ")),
                        (true, None, Some(h)) if h.status == "healthy" => h.status.clone(),
                        (true, None, Some(h)) => format!("{} ({})", h.status, h.detail),
                        (true, None, None) => "enabled".to_owned(),
                    };
                    let owner = r.owner.clone().unwrap_or_else(|| "-".into());
                    vec![r.id.to_string(), r.name(), r.target.clone(), state, owner]
                })
                .collect();
            print_table(&["ID", "ROUTE", "TARGET", "STATE", "OWNER"], &rows);
            print_left_out(&status["labels"]);
        }
        RoutesCommand::Add {
            host,
            path,
            target,
            priority,
            health_path,
            health_interval,
            policy,
            disabled,
        } => {
            let route = NewRoute {
                host,
                path,
                priority,
                target,
                policy: parse_policy(policy)?,
                middlewares: Vec::new(),
                health: health_path.map(|path| health(path, health_interval)),
                enabled: !disabled,
                owner: None,
            };
            written(&json, "added", api.add(&route, true).await?)?;
        }
        RoutesCommand::Rm { route } => {
            let id = resolve(&api, &route).await?;
            written(&json, "removed", api.remove(id, true).await?)?;
        }
        RoutesCommand::Edit {
            route,
            host,
            path,
            target,
            priority,
            enable,
            disable,
            health_path,
            no_health,
            policy,
        } => {
            let id = resolve(&api, &route).await?;
            let patch = RoutePatch {
                host,
                path,
                priority,
                target,
                policy: policy.map(|p| parse_policy(Some(p))).transpose()?,
                middlewares: None,
                health: if no_health {
                    Some(None)
                } else {
                    health_path.map(|p| Some(health(p, 10)))
                },
                enabled: if enable {
                    Some(true)
                } else if disable {
                    Some(false)
                } else {
                    None
                },
                owner: None,
            };
            written(&json, "changed", api.update(id, &patch, true).await?)?;
        }
        RoutesCommand::History { limit } => {
            let changes = api.history(limit).await?;
            if json {
                return print_json(&serde_json::to_value(&changes)?);
            }
            let rows: Vec<Vec<String>> = changes
                .iter()
                .map(|c| {
                    vec![
                        c.version.to_string(),
                        c.at.clone(),
                        c.actor.clone(),
                        describe(c.action, &c.before, &c.after),
                    ]
                })
                .collect();
            print_table(&["VERSION", "AT", "BY", "CHANGE"], &rows);
        }
        RoutesCommand::Rollback { version } => written(&json, "rolled back", api.rollback(version, true).await?)?,
    }
    Ok(())
}

fn health(path: String, interval_secs: u64) -> HealthCheck {
    HealthCheck {
        path,
        interval_secs,
        timeout_ms: 2000,
        unhealthy_after: 3,
        healthy_after: 2,
    }
}

fn parse_policy(p: Option<String>) -> Result<Value> {
    match p {
        None => Ok(Value::Null),
        Some(p) => serde_json::from_str(&p).or(Ok(Value::String(p))),
    }
}

/// A route id, or the id of the route with that `host[/path]`.
async fn resolve(api: &AdminClient, route: &str) -> Result<u64> {
    if let Ok(id) = route.parse() {
        return Ok(id);
    }
    let (host, path) = match route.find('/') {
        Some(i) => (&route[..i], &route[i..]),
        None => (route, "/"),
    };
    let routes: Vec<Route> = api.routes().await?;
    match routes
        .iter()
        .find(|r| r.host.eq_ignore_ascii_case(host) && r.path == path.trim_end_matches('/').max("/"))
    {
        Some(r) => Ok(r.id),
        None => bail!("no route {route}; see `routehub routes list`"),
    }
}

/// Routes containers' labels asked for and did not get (`/api/status`).
fn print_left_out(labels: &Value) {
    let left_out = labels["left_out"].as_array().map(Vec::as_slice).unwrap_or_default();
    if left_out.is_empty() {
        return;
    }
    println!("\nlabel routes left out:");
    for l in left_out {
        let (container, route, reason) = (
            l["container"].as_str().unwrap_or("?"),
            l["route"].as_str().unwrap_or(""),
            l["reason"].as_str().unwrap_or("?"),
        );
        match route {
            "" => println!("  container {container}: {reason}"),
            route => println!("  container {container}, {route}: {reason}"),
        }
    }
}

/// Route id → `gateway: reason` for each connected gateway that refuses
/// it, from `/api/status`.
fn refusals(status: &Value) -> BTreeMap<u64, Vec<String>> {
    let mut by_route: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (gateway, g) in status["gateways"].as_object().into_iter().flatten() {
        for r in g["refused"].as_array().into_iter().flatten() {
            if let Some(id) = r["route_id"].as_u64() {
                let reason = r["reason"].as_str().unwrap_or("no reason given");
                by_route.entry(id).or_default().push(format!("{gateway}: {reason}"));
            }
        }
    }
    by_route
}

/// Prints a write's outcome; an error (a failing exit status) when a
/// gateway refused the route, which is then not live there.
fn written(json: &bool, what: &str, reply: Value) -> Result<()> {
    let refused: Vec<String> = reply["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}: {}",
                r["gateway"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("no reason given")
            )
        })
        .collect();
    if *json {
        print_json(&reply)?;
    } else {
        let route = reply.get("route").filter(|r| !r.is_null());
        let name = route
            .map(|r| {
                format!(
                    " {} ({} → {})",
                    r["id"],
                    r["host"].as_str().unwrap_or("?"),
                    r["target"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        let gw = &reply["gateways"];
        let live = gw.get("live").unwrap_or(&gw["acknowledged"]);
        println!(
            "{what}{name}: version {}, live on {live}/{} gateway(s)",
            reply["version"], gw["connected"]
        );
    }
    if !refused.is_empty() {
        bail!(
            "refused by {} gateway(s), which won't serve it: {}",
            refused.len(),
            refused.join("; ")
        );
    }
    Ok(())
}

fn describe(action: ChangeAction, before: &Value, after: &Value) -> String {
    let route = |v: &Value| {
        let path = v["path"].as_str().unwrap_or("/");
        format!(
            "{}{}",
            v["host"].as_str().unwrap_or("?"),
            if path == "/" { "" } else { path }
        )
    };
    match action {
        ChangeAction::Add => format!("add {} → {}", route(after), after["target"].as_str().unwrap_or("?")),
        ChangeAction::Remove => format!("remove {}", route(before)),
        ChangeAction::Update => format!("update {}", route(after)),
        ChangeAction::Rollback => format!("rollback ({} routes)", after.as_array().map_or(0, Vec::len)),
    }
}

pub fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v).context("JSON output")?);
    Ok(())
}

pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}
