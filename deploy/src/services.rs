//! The health of a compose project's services, the way a deploy needs it:
//! a one-shot service that exited 0 is *completed*, not failed; one that
//! keeps restarting is a *crash loop*; a service with a healthcheck is
//! ready only once it passes.

use std::time::Duration;

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use futures_util::StreamExt;

use crate::engine::Engine;
use crate::error::Result;

/// Restarts after which a service that is not healthy is a crash loop.
pub const CRASH_LOOP_RESTARTS: i64 = 3;

/// Where one service's container stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceHealth {
    /// Created, or its healthcheck has not passed yet.
    Starting,
    /// Running, with no healthcheck.
    Running,
    Healthy,
    /// Exited 0: a one-shot service that did its job.
    Completed,
    Unhealthy,
    /// Exited with this code.
    Failed(i64),
    CrashLoop,
}

impl ServiceHealth {
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            ServiceHealth::Running | ServiceHealth::Healthy | ServiceHealth::Completed
        )
    }

    pub fn is_failed(self) -> bool {
        matches!(
            self,
            ServiceHealth::Unhealthy | ServiceHealth::Failed(_) | ServiceHealth::CrashLoop
        )
    }

    /// Classifies a container from what the engine says of it.
    pub fn of(
        state: Option<ContainerStateStatusEnum>,
        health: Option<HealthStatusEnum>,
        exit: i64,
        restarts: i64,
    ) -> Self {
        use ContainerStateStatusEnum as S;
        use HealthStatusEnum as H;
        if restarts >= CRASH_LOOP_RESTARTS && health != Some(H::HEALTHY) {
            return ServiceHealth::CrashLoop;
        }
        match state {
            Some(S::RUNNING) => match health {
                Some(H::HEALTHY) => ServiceHealth::Healthy,
                Some(H::UNHEALTHY) => ServiceHealth::Unhealthy,
                Some(H::STARTING) => ServiceHealth::Starting,
                _ => ServiceHealth::Running,
            },
            Some(S::EXITED) if exit == 0 => ServiceHealth::Completed,
            Some(S::EXITED | S::DEAD) => ServiceHealth::Failed(exit),
            Some(S::RESTARTING) => ServiceHealth::CrashLoop,
            _ => ServiceHealth::Starting,
        }
    }
}

impl std::fmt::Display for ServiceHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceHealth::Starting => f.write_str("starting"),
            ServiceHealth::Running => f.write_str("running"),
            ServiceHealth::Healthy => f.write_str("healthy"),
            ServiceHealth::Completed => f.write_str("completed"),
            ServiceHealth::Unhealthy => f.write_str("unhealthy"),
            ServiceHealth::Failed(code) => write!(f, "failed (exit {code})"),
            ServiceHealth::CrashLoop => f.write_str("crash loop"),
        }
    }
}

/// One container of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// The compose service it belongs to.
    pub service: String,
    /// The container's name.
    pub container: String,
    pub health: ServiceHealth,
    pub restarts: i64,
}

/// The image a service's container runs: the name its config gives, the
/// local image ID, and the first registry digest where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImage {
    pub service: String,
    pub image: String,
    pub id: String,
    pub digest: Option<String>,
}

/// Most log lines one read returns without following.
pub const MAX_LOG_TAIL: usize = 1000;

/// How a wait for a project ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every service ready.
    Ready(Vec<ServiceState>),
    /// A service failed (unhealthy, exited non-zero, crash loop).
    Failed(Vec<ServiceState>),
    /// Still starting when the time was up.
    TimedOut(Vec<ServiceState>),
}

impl Engine {
    /// The containers of compose project `project`, running or not.
    pub async fn project(&self, project: &str) -> Result<Vec<ServiceState>> {
        let mut states = Vec::new();
        for c in self.list_project(project).await? {
            let Some(id) = c.id else { continue };
            let inspect = self
                .docker()
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await?;
            let state = inspect.state.unwrap_or_default();
            let service = c
                .labels
                .as_ref()
                .and_then(|l| l.get("com.docker.compose.service").cloned())
                .unwrap_or_default();
            states.push(ServiceState {
                service,
                container: inspect.name.unwrap_or_default().trim_start_matches('/').to_owned(),
                health: ServiceHealth::of(
                    state.status,
                    state.health.and_then(|h| h.status),
                    state.exit_code.unwrap_or(0),
                    inspect.restart_count.unwrap_or(0),
                ),
                restarts: inspect.restart_count.unwrap_or(0),
            });
        }
        states.sort_by(|a, b| a.service.cmp(&b.service).then(a.container.cmp(&b.container)));
        Ok(states)
    }

    /// The image each container of `project` runs.
    pub async fn images(&self, project: &str) -> Result<Vec<ServiceImage>> {
        let mut images = Vec::new();
        for c in self.list_project(project).await? {
            let Some(id) = c.id else { continue };
            let inspect = self
                .docker()
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await?;
            let service = c
                .labels
                .as_ref()
                .and_then(|l| l.get("com.docker.compose.service").cloned())
                .unwrap_or_default();
            let image_id = inspect.image.unwrap_or_default();
            let digest = self
                .docker()
                .inspect_image(&image_id)
                .await?
                .repo_digests
                .and_then(|d| d.into_iter().next());
            images.push(ServiceImage {
                service,
                image: inspect.config.and_then(|c| c.image).unwrap_or_default(),
                id: image_id,
                digest,
            });
        }
        images.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(images)
    }

    /// The logs of every container of `project` (of `service` only, if
    /// given): the last `tail` lines, then, with `follow`, what comes,
    /// each line prefixed with its service's name.
    pub fn logs(
        &self,
        container: &str,
        prefix: &str,
        tail: usize,
        follow: bool,
    ) -> impl futures_util::Stream<Item = Result<String>> + use<> {
        let options = bollard::query_parameters::LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.min(MAX_LOG_TAIL).to_string(),
            ..Default::default()
        };
        let prefix = prefix.to_owned();
        self.docker().logs(container, Some(options)).map(move |chunk| {
            let chunk = chunk?;
            Ok(format!("{prefix} | {}", String::from_utf8_lossy(&chunk.into_bytes())))
        })
    }

    async fn list_project(&self, project: &str) -> Result<Vec<bollard::models::ContainerSummary>> {
        let filters = std::collections::HashMap::from([(
            "label".to_owned(),
            vec![format!("com.docker.compose.project={project}")],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        Ok(self.docker().list_containers(Some(options)).await?)
    }

    /// Waits until every service of `project` is ready, one fails, or
    /// `within` is up; looks again at each of the project's events (and
    /// at least every half second, for changes no event announces).
    /// `seen` is shown the states at every look.
    pub async fn wait_ready(
        &self,
        project: &str,
        within: Duration,
        mut seen: impl FnMut(&[ServiceState]),
    ) -> Result<Readiness> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Box::pin(self.container_events());
        loop {
            let states = self.project(project).await?;
            seen(&states);
            if states.iter().any(|s| s.health.is_failed()) {
                return Ok(Readiness::Failed(states));
            }
            if !states.is_empty() && states.iter().all(|s| s.health.is_ready()) {
                return Ok(Readiness::Ready(states));
            }
            let next = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
            if tokio::time::Instant::now() >= deadline {
                return Ok(Readiness::TimedOut(states));
            }
            match tokio::time::timeout_at(next, events.next()).await {
                Ok(Some(Ok(_))) | Err(_) => {}
                // The event stream is over: looks go on at the half second.
                Ok(_) => tokio::time::sleep_until(next).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerStateStatusEnum as S;
    use HealthStatusEnum as H;

    #[test]
    fn a_clean_exit_is_completed_and_restarts_are_a_crash_loop() {
        assert_eq!(ServiceHealth::of(Some(S::EXITED), None, 0, 0), ServiceHealth::Completed);
        assert_eq!(ServiceHealth::of(Some(S::EXITED), None, 2, 0), ServiceHealth::Failed(2));
        assert_eq!(ServiceHealth::of(Some(S::RUNNING), None, 0, 0), ServiceHealth::Running);
        assert_eq!(
            ServiceHealth::of(Some(S::RUNNING), Some(H::STARTING), 0, 0),
            ServiceHealth::Starting
        );
        assert_eq!(
            ServiceHealth::of(Some(S::RUNNING), Some(H::HEALTHY), 0, 5),
            ServiceHealth::Healthy
        );
        assert_eq!(
            ServiceHealth::of(Some(S::RUNNING), None, 0, 3),
            ServiceHealth::CrashLoop
        );
        assert_eq!(
            ServiceHealth::of(Some(S::RESTARTING), None, 1, 1),
            ServiceHealth::CrashLoop
        );
        assert_eq!(ServiceHealth::of(Some(S::CREATED), None, 0, 0), ServiceHealth::Starting);
        assert!(ServiceHealth::Completed.is_ready() && !ServiceHealth::Completed.is_failed());
        assert!(ServiceHealth::CrashLoop.is_failed());
    }
}
