//! Compose deployments: each apply is checked by the compose CLI, written
//! as an immutable version, and run as a generation of its own
//! (`routehub_<name>_<generation>`) beside the one serving. Once every
//! service is ready the new generation's label routes take over (see
//! `containers`), the gateways acknowledge them, and the old generation
//! stops. A generation that does not become ready within its time is
//! taken down while the old one goes on serving: an automatic rollback
//! that never stopped anything.
//!
//! A compose whose services publish host ports can't run two generations
//! at once (the second can't bind): the old one stops first, and a
//! failure redeploys it, pinned to the images it ran.
//!
//! One deployment per compose at a time; a second is refused, never
//! interleaved.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::compose::{ComposeCli, Spec, project};
use deploy::{Engine, Readiness, ServiceState};
use serde::Deserialize;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::records::{
    Compose, DeployStatus, Deployment, ImageIdentity, MAX_DEPLOY_OUTPUT, MAX_HEALTH_EVENTS, ServiceEvent, keep_end,
};
use crate::secrets::{self, SecretKey};
use crate::status::Status;
use crate::store::{NewVersion, Store, now};

/// Largest compose file a deployment takes.
pub const MAX_COMPOSE_FILE: usize = deploy::compose::MAX_COMPOSE_FILE;
/// How long `up` may take (it pulls what is missing).
const UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `down` may take.
const DOWN_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time for every service to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest ready timeout a caller may ask for.
const MAX_READY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the old generation's label routes may take to move to the
/// new one before it is stopped anyway.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the gateways may take to acknowledge the switch.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits between attempts to reach the engine for health events.
const HEALTH_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// After the switch, how long requests the old generation took before it
/// may take to finish.
const DRAIN: Duration = Duration::from_secs(2);

/// A deploy asked for through the API or CLI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    pub name: String,
    pub yaml: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Values compose interpolates (`${NAME}`), sealed at rest and never
    /// shown.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Take a generation that fails down and keep (or bring back) the
    /// previous one. On unless said otherwise.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Seconds every service has to become ready.
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Apply {
    /// `yaml` as compose `name`, with the defaults.
    pub fn new(name: &str, yaml: &str) -> Apply {
        Apply {
            name: name.to_owned(),
            yaml: yaml.to_owned(),
            description: None,
            secrets: BTreeMap::new(),
            auto_rollback: true,
            ready_timeout_secs: None,
        }
    }
}

/// What runs deployments.
pub struct Deployer {
    store: Store,
    socket: PathBuf,
    key: SecretKey,
    cli: OnceCell<std::result::Result<ComposeCli, String>>,
    /// Compose → the deployment under way.
    busy: Mutex<HashMap<String, u64>>,
    /// The relay's gateway sessions, to wait for their acknowledgement.
    status: watch::Receiver<Status>,
}

/// Holds a compose's one deploy slot; frees it when dropped, however the
/// deploy ends.
struct Claim {
    deployer: Arc<Deployer>,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.deployer.busy_map().remove(&self.name);
    }
}

/// What one run needs besides its record.
struct Run {
    yaml: String,
    /// Interpolated by compose; masked in what is saved.
    secrets: BTreeMap<String, String>,
    pins: Option<String>,
    ready_timeout: Duration,
    auto_rollback: bool,
}

impl Deployer {
    /// A deployer over `store`, sealing secrets with the key in
    /// `data_dir`. Deployments a stopped relay left under way are marked
    /// failed; the compose CLI is looked for in the background, and the
    /// serving deployments' health followed until `shutdown`.
    pub async fn start(
        store: Store,
        socket: PathBuf,
        data_dir: &std::path::Path,
        status: watch::Receiver<Status>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Deployer>> {
        let key = SecretKey::load_or_create(data_dir)?;
        for mut d in store.unfinished_deployments().await? {
            tracing::warn!(compose = %d.compose, deployment = d.id, "a deployment was under way when the relay stopped; marked failed");
            d.status = DeployStatus::Failed;
            d.detail = "the relay stopped during this deployment".into();
            store.save_deployment(d).await?;
        }
        let deployer = Arc::new(Deployer {
            store,
            socket,
            key,
            cli: OnceCell::new(),
            busy: Mutex::new(HashMap::new()),
            status,
        });
        let look = deployer.clone();
        tokio::spawn(async move {
            match look.cli().await {
                Ok(cli) => {
                    tracing::info!(cli = %cli.command(), version = %cli.version, "deployments use this compose CLI")
                }
                Err(e) => tracing::warn!(error = %e, "deployments are off"),
            }
        });
        let watch = deployer.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watch.follow_health() => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(deployer)
    }

    /// Records every change of the serving deployments' services in their
    /// health history, driven by the engine's events; after the engine
    /// comes back, every one is read anew (what happened meanwhile).
    async fn follow_health(&self) {
        let mut wait = HEALTH_RETRY.0;
        loop {
            if let Ok(engine) = Engine::connect(&self.socket).await {
                wait = HEALTH_RETRY.0;
                let mut events = Box::pin(engine.container_events());
                self.record_health(&engine, None).await;
                while let Some(Ok(e)) = futures_util::StreamExt::next(&mut events).await {
                    if let Some(p) = e.project.filter(|p| p.starts_with("routehub_")) {
                        self.record_health(&engine, Some(&p)).await;
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(HEALTH_RETRY.1);
        }
    }

    /// Appends what changed to the health history of each serving
    /// deployment (of `project` only, if given). A compose being deployed
    /// is left to its deployment, which records its own.
    async fn record_health(&self, engine: &Engine, project: Option<&str>) {
        let Ok(composes) = self.store.composes().await else {
            return;
        };
        for c in composes {
            if self.under_way(&c.name).is_some() {
                continue;
            }
            let Ok(history) = self.store.deployments(&c.name, crate::store::MAX_HISTORY).await else {
                continue;
            };
            let Some(mut live) = history.into_iter().find(|d| d.status == DeployStatus::Healthy) else {
                continue;
            };
            let Ok(p) = project_of(&live) else { continue };
            if project.is_some_and(|want| want != p) {
                continue;
            }
            let Ok(states) = engine.project(&p).await else { return };
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            for e in &live.health {
                last.insert(e.service.clone(), e.state.clone());
            }
            let before = live.health.clone();
            record_transitions(&mut last, &mut live.health, &states);
            if live.health != before {
                tracing::info!(compose = %c.name, deployment = live.id, services = %describe(&states), "service health changed");
                if let Err(e) = self.store.save_deployment(live).await {
                    tracing::warn!(compose = %c.name, error = %e, "health history not saved");
                }
            }
        }
    }

    /// Version `version` of compose `name`, with its secrets opened.
    async fn version_with_secrets(
        &self,
        name: &str,
        version: u64,
    ) -> Result<(crate::records::ComposeVersion, BTreeMap<String, String>)> {
        let (v, sealed) = self.store.compose_version(name, version).await?;
        let secrets = match sealed {
            Some(s) => self.key.open(name, &s)?,
            None => BTreeMap::new(),
        };
        Ok((v, secrets))
    }

    fn busy_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compose CLI, or why there is none.
    pub async fn cli(&self) -> Result<&ComposeCli> {
        self.cli
            .get_or_init(|| async { ComposeCli::detect(&self.socket).await.map_err(|e| e.to_string()) })
            .await
            .as_ref()
            .map_err(|e| Error::Unavailable(e.clone()))
    }

    /// What the compose CLI is, or why deployments are off.
    pub async fn describe(&self) -> std::result::Result<String, String> {
        match self.cli().await {
            Ok(cli) => Ok(format!("{} ({})", cli.command(), cli.version)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn engine(&self) -> Result<Engine> {
        Engine::connect(&self.socket)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// The deployment under way of compose `name`, if any.
    pub fn under_way(&self, name: &str) -> Option<u64> {
        self.busy_map().get(name).copied()
    }

    fn claim(self: &Arc<Self>, name: &str) -> Result<Claim> {
        let mut busy = self.busy_map();
        if let Some(id) = busy.get(name) {
            return Err(Error::Conflict(format!(
                "deployment {id} of {name} is under way; wait for it (routehub deploy status {name})"
            )));
        }
        // Marked now, the deployment's id once it has one.
        busy.insert(name.to_owned(), 0);
        Ok(Claim {
            deployer: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Checks `apply`, writes its version and a deployment record, and
    /// starts the deployment; returns the record (deploying).
    pub async fn apply(self: &Arc<Self>, apply: Apply, actor: &str) -> Result<Deployment> {
        deploy::compose::check_name(&apply.name)?;
        secrets::check(&apply.secrets).map_err(Error::Invalid)?;
        if apply.yaml.len() > deploy::compose::MAX_COMPOSE_FILE {
            return Err(deploy::Error::TooLarge {
                size: apply.yaml.len(),
                limit: MAX_COMPOSE_FILE,
            }
            .into());
        }
        let ready_timeout = ready_timeout(apply.ready_timeout_secs)?;
        let claim = self.claim(&apply.name)?;
        let cli = self.cli().await?;
        // No version is written for an engine that is not there.
        self.engine().await?;
        let spec = Spec {
            yaml: &apply.yaml,
            pins: None,
            env: Some(&apply.secrets),
        };
        let resolved = match cli.config(&project(&apply.name, 0)?, &spec).await {
            Ok(r) => r,
            Err(deploy::Error::Failed { output, .. }) => {
                return Err(Error::Invalid(format!(
                    "the compose file: {}",
                    secrets::mask(&output, &apply.secrets)
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let sealed = if apply.secrets.is_empty() {
            None
        } else {
            Some(self.key.seal(&apply.name, &apply.secrets)?)
        };
        let (_, version) = self
            .store
            .add_compose_version(NewVersion {
                name: apply.name.clone(),
                description: apply.description,
                yaml: apply.yaml.clone(),
                resolved: secrets::mask(&resolved, &apply.secrets),
                secret_names: apply.secrets.keys().cloned().collect(),
                sealed,
                actor: actor.to_owned(),
            })
            .await?;
        let d = self
            .store
            .add_deployment(&apply.name, version.version, "apply", actor)
            .await?;
        let run = Run {
            yaml: apply.yaml,
            secrets: apply.secrets,
            pins: None,
            ready_timeout,
            auto_rollback: apply.auto_rollback,
        };
        Ok(self.spawn(claim, d, run))
    }

    /// Deploys version `version` of `name` again (default: the one that
    /// served before the current), each service pinned to the image it
    /// ran then.
    pub async fn rollback(self: &Arc<Self>, name: &str, version: Option<u64>, actor: &str) -> Result<Deployment> {
        let claim = self.claim(name)?;
        self.cli().await?;
        let history = self.store.deployments(name, crate::store::MAX_HISTORY).await?;
        let mut healthy = history.iter().filter(|d| d.status == DeployStatus::Healthy);
        let from = match version {
            Some(v) => healthy.find(|d| d.version == v),
            None => healthy.nth(1),
        };
        let version = match (version, from) {
            (Some(v), _) => v,
            (None, Some(d)) => d.version,
            (None, None) => {
                return Err(Error::NotFound(format!(
                    "an earlier healthy deployment of {name} to roll back to"
                )));
            }
        };
        let (v, secrets) = self.version_with_secrets(name, version).await?;
        let reason = format!("rollback to version {version}");
        let d = self.store.add_deployment(name, version, &reason, actor).await?;
        let run = Run {
            yaml: v.yaml,
            secrets,
            pins: from.map(pins),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            auto_rollback: true,
        };
        Ok(self.spawn(claim, d, run))
    }

    fn spawn(self: &Arc<Self>, claim: Claim, d: Deployment, run: Run) -> Deployment {
        self.busy_map().insert(d.compose.clone(), d.id);
        let this = self.clone();
        let record = d.clone();
        tokio::spawn(async move {
            let _claim = claim;
            let (name, id) = (d.compose.clone(), d.id);
            if let Err(e) = this.run(d, run).await {
                tracing::warn!(compose = %name, deployment = id, error = %e, "deployment: a record or the rollback after it failed");
            }
        });
        record
    }

    /// Runs one deployment to its end (its rollback included) and saves
    /// how it ended: the record reads deploying until then.
    async fn run(&self, mut d: Deployment, run: Run) -> Result<()> {
        if let Err(e) = self.deploy(&mut d, &run).await {
            d.status = DeployStatus::Failed;
            d.detail = e.to_string();
        }
        if d.status == DeployStatus::Failed
            && run.auto_rollback
            && let Err(e) = self.after_failure(&mut d, &run).await
        {
            d.detail.push_str(&format!("; the rollback failed: {e}"));
        }
        // Compose may echo an interpolated value in an error.
        d.output = keep_end(&secrets::mask(&d.output, &run.secrets), MAX_DEPLOY_OUTPUT);
        d.detail = secrets::mask(&d.detail, &run.secrets);
        tracing::info!(compose = %d.compose, deployment = d.id, version = d.version, status = d.status.as_str(), detail = %d.detail, "deployment ended");
        self.store.save_deployment(d).await?;
        Ok(())
    }

    /// Up, wait, switch, retire: the deployment's status says how it went.
    async fn deploy(&self, d: &mut Deployment, run: &Run) -> Result<()> {
        let cli = self.cli().await?;
        let engine = self.engine().await?;
        let project = project(&d.compose, d.generation)?;
        let spec = Spec {
            yaml: &run.yaml,
            pins: run.pins.as_deref(),
            env: Some(&run.secrets),
        };
        let (v, _) = self.store.compose_version(&d.compose, d.version).await?;
        if publishes_host_ports(&v.resolved) {
            // Two generations can't hold one host port: the old one goes
            // first (this deploy has downtime; say so).
            d.output
                .push_str("services publish host ports: the running generation stops first\n");
            self.retire(d, &engine, false).await?;
        }
        let up = cli.up(&project, &spec, UP_TIMEOUT).await?;
        d.output.push_str(&secrets::mask(&up.text, &run.secrets));
        self.store.save_deployment(d.clone()).await?;
        if !up.ok {
            d.status = DeployStatus::Failed;
            d.detail = format!("`{} up` failed (its output says why)", cli.command());
            return Ok(());
        }
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        let mut health = std::mem::take(&mut d.health);
        let readiness = engine
            .wait_ready(&project, run.ready_timeout, |states| {
                record_transitions(&mut last, &mut health, states)
            })
            .await?;
        d.health = health;
        match readiness {
            Readiness::Ready(_) => {
                d.images = engine
                    .images(&project)
                    .await?
                    .into_iter()
                    .map(|i| {
                        let identity = ImageIdentity {
                            image: i.image,
                            id: i.id,
                            digest: i.digest,
                        };
                        (i.service, identity)
                    })
                    .collect();
                *d = self.store.save_deployment(d.clone()).await?;
                self.retire(d, &engine, true).await?;
                d.status = DeployStatus::Healthy;
            }
            Readiness::Failed(states) => {
                d.status = DeployStatus::Failed;
                d.detail = format!("not ready: {}", describe(&states));
            }
            Readiness::TimedOut(states) => {
                d.status = DeployStatus::Failed;
                d.detail = format!("not ready within {:?}: {}", run.ready_timeout, describe(&states));
            }
        }
        Ok(())
    }

    /// After a failed deployment: its generation goes; the previous
    /// healthy one serves, brought back (pinned) if it was stopped.
    async fn after_failure(&self, d: &mut Deployment, run: &Run) -> Result<()> {
        let cli = self.cli().await?;
        let engine = self.engine().await?;
        let project = project(&d.compose, d.generation)?;
        let spec = Spec {
            yaml: &run.yaml,
            pins: run.pins.as_deref(),
            env: Some(&run.secrets),
        };
        let down = cli.down(&project, &spec, DOWN_TIMEOUT).await?;
        d.output.push_str(&down.text);
        let history = self.store.deployments(&d.compose, crate::store::MAX_HISTORY).await?;
        let Some(previous) = history
            .into_iter()
            .find(|p| p.id < d.id && p.status == DeployStatus::Healthy)
        else {
            d.detail.push_str("; nothing healthy before it to roll back to");
            return Ok(());
        };
        let previous_project = project_of(&previous)?;
        if engine.project(&previous_project).await?.is_empty() {
            // It was stopped first (host ports): bring it back, pinned.
            let (v, secrets) = self.version_with_secrets(&d.compose, previous.version).await?;
            let pins = pins(&previous);
            let spec = Spec {
                yaml: &v.yaml,
                pins: Some(&pins),
                env: Some(&secrets),
            };
            let up = cli.up(&previous_project, &spec, UP_TIMEOUT).await?;
            d.output.push_str(&up.text);
            if !up.ok {
                d.detail
                    .push_str(&format!("; bringing deployment {} back failed too", previous.id));
                return Ok(());
            }
        }
        d.status = DeployStatus::RolledBack;
        d.detail.push_str(&format!(
            "; deployment {} (version {}) serves",
            previous.id, previous.version
        ));
        Ok(())
    }

    /// Stops every other generation of `d`'s compose. With `switch`, first
    /// waits for their label routes to move to `d`'s containers and for
    /// the gateways to acknowledge it, then for their requests to finish.
    async fn retire(&self, d: &mut Deployment, engine: &Engine, switch: bool) -> Result<()> {
        let cli = self.cli().await?;
        let current = project(&d.compose, d.generation)?;
        let history = self.store.deployments(&d.compose, crate::store::MAX_HISTORY).await?;
        let mut old = Vec::new();
        for other in history.iter().filter(|o| o.generation != d.generation) {
            let p = project_of(other)?;
            if p != current && !engine.project(&p).await?.is_empty() {
                old.push((p, other.version));
            }
        }
        if old.is_empty() {
            return Ok(());
        }
        if switch {
            self.wait_for_switch(&old).await;
        }
        for (p, version) in old {
            // With its secrets: compose interpolates the file even to
            // take it down, and `${X:?}` fails without them.
            let (v, secrets) = self.version_with_secrets(&d.compose, version).await?;
            let spec = Spec {
                yaml: &v.yaml,
                pins: None,
                env: Some(&secrets),
            };
            let down = cli.down(&p, &spec, DOWN_TIMEOUT).await?;
            d.output.push_str(&secrets::mask(&down.text, &secrets));
            if !down.ok {
                d.detail = format!("{p} did not stop; see the output");
            }
        }
        Ok(())
    }

    /// Waits (bounded) until no route is owned by a container of the
    /// projects `old`, the gateways have the change, and what they sent
    /// before had time to finish.
    async fn wait_for_switch(&self, old: &[(String, u64)]) {
        let owned_by_old = |owner: &str| {
            let name = owner.trim_start_matches("container:");
            old.iter()
                .any(|(p, _)| name.starts_with(&format!("{p}_")) || name.starts_with(&format!("{p}-")))
        };
        let mut events = self.store.subscribe();
        let switched = tokio::time::timeout(SWITCH_TIMEOUT, async {
            loop {
                let routes = self.store.list().await.unwrap_or_default();
                if !routes.iter().any(|r| r.owner.as_deref().is_some_and(owned_by_old)) {
                    return;
                }
                let _ = events.recv().await;
            }
        })
        .await;
        if switched.is_err() {
            tracing::warn!(
                "the old generation still owns routes; stopping it anyway (do the new one's labels ask for them?)"
            );
        }
        if let Ok((version, _)) = self.store.version().await {
            let mut status = self.status.clone();
            let _ = tokio::time::timeout(
                ACK_TIMEOUT,
                status.wait_for(|s| {
                    let (acked, connected) = crate::status::acked(s, version);
                    acked == connected
                }),
            )
            .await;
        }
        tokio::time::sleep(DRAIN).await;
    }

    /// Takes compose `name` down (every generation) and forgets it.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<()> {
        let _claim = self.claim(name)?;
        let cli = self.cli().await?;
        let engine = self.engine().await?;
        for d in self.store.deployments(name, crate::store::MAX_HISTORY).await? {
            let p = project_of(&d)?;
            if engine.project(&p).await?.is_empty() {
                continue;
            }
            let (v, secrets) = self.version_with_secrets(name, d.version).await?;
            let spec = Spec {
                yaml: &v.yaml,
                pins: None,
                env: Some(&secrets),
            };
            let down = cli.down(&p, &spec, DOWN_TIMEOUT).await?;
            if !down.ok {
                return Err(Error::Conflict(format!("{p} did not stop: {}", down.text.trim())));
            }
        }
        self.store.remove_compose(name).await
    }

    /// The services of the deployment that serves `name` (the newest
    /// healthy one), as the engine sees them now.
    pub async fn services(&self, name: &str) -> Result<(Option<Deployment>, Vec<ServiceState>)> {
        let live = self
            .store
            .deployments(name, crate::store::MAX_HISTORY)
            .await?
            .into_iter()
            .find(|d| d.status == DeployStatus::Healthy);
        let Some(live) = live else {
            return Ok((None, Vec::new()));
        };
        let states = self.engine().await?.project(&project_of(&live)?).await?;
        Ok((Some(live), states))
    }

    /// The engine, for log streams.
    pub async fn engine_for_logs(&self) -> Result<Engine> {
        self.engine().await
    }

    /// The compose as stored, for the API.
    pub async fn compose(&self, name: &str) -> Result<Compose> {
        self.store.compose(name).await
    }
}

fn project_of(d: &Deployment) -> Result<String> {
    Ok(project(&d.compose, d.generation)?)
}

fn ready_timeout(secs: Option<u64>) -> Result<Duration> {
    match secs.map(Duration::from_secs) {
        None => Ok(DEFAULT_READY_TIMEOUT),
        Some(d) if d.is_zero() || d > MAX_READY_TIMEOUT => Err(Error::Invalid(format!(
            "ready_timeout_secs: 1 to {}",
            MAX_READY_TIMEOUT.as_secs()
        ))),
        Some(d) => Ok(d),
    }
}

/// An override file pinning each service of `d` to the image it ran.
fn pins(d: &Deployment) -> String {
    let services: serde_json::Map<String, serde_json::Value> = d
        .images
        .iter()
        .map(|(service, i)| (service.clone(), serde_json::json!({ "image": i.pinned() })))
        .collect();
    serde_json::json!({ "services": services }).to_string()
}

/// Whether a resolved compose config publishes host ports (a `ports:`
/// key under a service, in the block style `config` prints).
fn publishes_host_ports(resolved: &str) -> bool {
    resolved.lines().any(|l| l.trim_end() == "    ports:")
}

/// Appends the services whose state changed since `last` to `health`.
fn record_transitions(last: &mut BTreeMap<String, String>, health: &mut Vec<ServiceEvent>, states: &[ServiceState]) {
    for s in states {
        let state = s.health.to_string();
        if last.get(&s.service) != Some(&state) {
            last.insert(s.service.clone(), state.clone());
            health.push(ServiceEvent {
                at: now(),
                service: s.service.clone(),
                state,
            });
        }
    }
    if health.len() > MAX_HEALTH_EVENTS {
        health.drain(..health.len() - MAX_HEALTH_EVENTS);
    }
}

fn describe(states: &[ServiceState]) -> String {
    if states.is_empty() {
        return "no containers".into();
    }
    states
        .iter()
        .map(|s| format!("{} {}", s.service, s.health))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deployments_a_stopped_relay_left_under_way_end_failed_at_its_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("relay.db")).unwrap();
        let version = NewVersion {
            name: "web".into(),
            yaml: "services: {}".into(),
            actor: "api".into(),
            ..Default::default()
        };
        store.add_compose_version(version).await.unwrap();
        let left = store.add_deployment("web", 1, "apply", "api").await.unwrap();
        assert_eq!(left.status, DeployStatus::Deploying);
        let shutdown = CancellationToken::new();
        let status = watch::channel(Status::new()).1;
        let socket = dir.path().join("no-engine.sock");
        Deployer::start(store.clone(), socket, dir.path(), status, shutdown.clone())
            .await
            .unwrap();
        let d = store.deployment(left.id).await.unwrap();
        assert_eq!(d.status, DeployStatus::Failed);
        assert!(d.detail.contains("the relay stopped"), "{}", d.detail);
        shutdown.cancel();
    }

    #[test]
    fn host_ports_are_seen_in_both_clis_output() {
        let v1 = "services:\n  web:\n    image: x\n    ports:\n    - 8080:80/tcp\nversion: '2.4'\n";
        let v2 = "name: p\nservices:\n  web:\n    image: x\n    ports:\n      - mode: ingress\n        target: 80\n        published: \"8080\"\n";
        let none = "services:\n  web:\n    image: x\n    labels:\n      ports: none\n";
        assert!(publishes_host_ports(v1) && publishes_host_ports(v2));
        assert!(!publishes_host_ports(none));
    }

    #[test]
    fn rollbacks_pin_digests_else_ids() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "id": 1, "compose": "web", "version": 1, "generation": 1, "status": "healthy", "reason": "apply",
            "detail": "", "images": {}, "output": "", "health": [], "actor": "api", "created_at": "", "updated_at": ""
        }))
        .unwrap();
        d.images.insert(
            "web".into(),
            ImageIdentity {
                image: "web:latest".into(),
                id: "sha256:aa".into(),
                digest: None,
            },
        );
        d.images.insert(
            "db".into(),
            ImageIdentity {
                image: "db:1".into(),
                id: "sha256:bb".into(),
                digest: Some("db@sha256:cc".into()),
            },
        );
        let pins: serde_json::Value = serde_json::from_str(&pins(&d)).unwrap();
        assert_eq!(pins["services"]["web"]["image"], "sha256:aa");
        assert_eq!(pins["services"]["db"]["image"], "db@sha256:cc");
    }

    #[test]
    fn transitions_are_recorded_once_each() {
        let state = |h| ServiceState {
            service: "web".into(),
            container: "c".into(),
            health: h,
            restarts: 0,
        };
        let (mut last, mut health) = (BTreeMap::new(), Vec::new());
        for h in [
            deploy::ServiceHealth::Starting,
            deploy::ServiceHealth::Starting,
            deploy::ServiceHealth::Healthy,
        ] {
            record_transitions(&mut last, &mut health, &[state(h)]);
        }
        let states: Vec<&str> = health.iter().map(|e| e.state.as_str()).collect();
        assert_eq!(states, ["starting", "healthy"]);
    }
}
