//! The Docker Engine over its unix socket, at the API version both sides
//! speak (Engine 20.10 speaks 1.41; today's 27–29 speak 1.44 and up): the
//! running containers as Routehub needs them, and a stream of the events
//! that change them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::{Stream, StreamExt};

use crate::error::{Error, Result};

/// Where the engine listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Seconds any one request to the engine may take (the event stream is
/// long-lived and not bound by it).
const REQUEST_TIMEOUT_SECS: u64 = 10;

/// A container's health as its healthcheck last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No healthcheck: running is all there is to know.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// A running container, as far as routing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its address on the first network that gives it one.
    pub address: Option<IpAddr>,
    /// Exposed TCP ports, published or not.
    pub exposed: Vec<u16>,
    pub health: Health,
    /// When it was created, as a string that sorts in time order (UTC,
    /// nanoseconds): of two ready containers asking for one route, the
    /// newer one gets it.
    pub created: String,
}

impl Container {
    /// Whether its labels ask for routes.
    pub fn asks_for_routes(&self) -> bool {
        self.labels
            .keys()
            .any(|k| k.starts_with("routehub.") || k.starts_with("traefik."))
    }

    /// Whether it may get traffic: no healthcheck, or a passing one.
    pub fn is_ready(&self) -> bool {
        matches!(self.health, Health::None | Health::Healthy)
    }

    fn from_summary(s: ContainerSummary) -> Option<Container> {
        if s.state != Some(ContainerSummaryStateEnum::RUNNING) {
            return None;
        }
        let name = s
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default();
        let networks = s.network_settings.and_then(|n| n.networks).unwrap_or_default();
        // Networks by name, so the choice is the same every time.
        let networks: BTreeMap<String, _> = networks.into_iter().collect();
        let address = networks
            .values()
            .filter_map(|e| e.ip_address.as_deref()?.parse::<IpAddr>().ok())
            .next();
        let mut exposed: Vec<u16> = s
            .ports
            .unwrap_or_default()
            .iter()
            .filter(|p| p.typ.is_none_or(|t| t.to_string() == "tcp"))
            .map(|p| p.private_port)
            .collect();
        exposed.sort_unstable();
        exposed.dedup();
        Some(Container {
            id: s.id?,
            name,
            labels: s.labels.unwrap_or_default().into_iter().collect(),
            address,
            exposed,
            health: health_of(s.status.as_deref().unwrap_or("")),
            // Seconds only; containers that ask for routes get nanoseconds
            // from `running`.
            created: format!("{:020}", s.created.unwrap_or(0)),
        })
    }
}

/// An RFC 3339 UTC time (`2026-12-07T22:13:05.1234Z`, trailing zeros of
/// the fraction dropped, as the engine writes it) as a string that sorts in
/// time order: the fraction padded to nine digits.
fn sortable_time(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (whole, fraction) = t.split_once('.').unwrap_or((t, ""));
    let fraction: String = fraction.chars().take_while(char::is_ascii_digit).take(9).collect();
    format!("{whole}.{fraction:0<9}")
}

/// Health from the status line (`Up 3 minutes (healthy)`): the one place
/// every API version reports it in a container list.
fn health_of(status: &str) -> Health {
    if status.ends_with("(healthy)") {
        Health::Healthy
    } else if status.ends_with("(unhealthy)") {
        Health::Unhealthy
    } else if status.ends_with("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    }
}

/// Something that happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `start`, `die`, `health_status: healthy`, …
    pub action: String,
    /// The container's id.
    pub id: String,
    /// Its compose project (`com.docker.compose.project`), if any.
    pub project: Option<String>,
}

impl Event {
    /// What the event says of the container, where a container list read
    /// right after it may not say it yet: the engine sends `die` before its
    /// list shows the container stopped.
    pub fn news(&self) -> Option<News> {
        match self.action.as_str() {
            "die" | "stop" | "destroy" | "pause" => Some(News::Ended),
            "start" | "unpause" => Some(News::Running),
            "health_status: healthy" => Some(News::Health(Health::Healthy)),
            "health_status: unhealthy" => Some(News::Health(Health::Unhealthy)),
            _ => None,
        }
    }
}

/// What an event says of its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    Ended,
    Running,
    Health(Health),
}

/// A connection to one Docker Engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    socket: PathBuf,
}

impl Engine {
    /// Connects to the engine at `socket` and settles the API version.
    pub async fn connect(socket: &Path) -> Result<Engine> {
        let unreachable = |reason: String| Error::Unreachable {
            socket: socket.to_owned(),
            reason,
        };
        if !socket.exists() {
            return Err(unreachable("no such socket".into()));
        }
        let path = socket.to_str().ok_or_else(|| unreachable("not a UTF-8 path".into()))?;
        let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Engine {
            docker,
            socket: socket.to_owned(),
        })
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The API version in use, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Every running container. Those with routing labels are looked at
    /// closely: their creation time to the nanosecond (two of them may be
    /// created within one second, a redeploy and the container it
    /// replaces) and their health as it is now.
    pub async fn running(&self) -> Result<Vec<Container>> {
        let options = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        let list = self.docker.list_containers(Some(options)).await?;
        let mut containers: Vec<Container> = list.into_iter().filter_map(Container::from_summary).collect();
        for c in containers.iter_mut().filter(|c| c.asks_for_routes()) {
            let inspect = match self
                .docker
                .inspect_container(&c.id, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => i,
                // Gone since the list: the next event says so.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(created) = inspect.created.as_deref() {
                c.created = sortable_time(created);
            }
            if let Some(status) = inspect.state.and_then(|s| s.health).and_then(|h| h.status) {
                c.health = match status {
                    HealthStatusEnum::HEALTHY => Health::Healthy,
                    HealthStatusEnum::UNHEALTHY => Health::Unhealthy,
                    HealthStatusEnum::STARTING => Health::Starting,
                    _ => Health::None,
                };
            }
        }
        Ok(containers)
    }

    /// Container events that can change what is routed; ends when the
    /// engine goes away (the caller reconnects and reads everything anew).
    pub fn container_events(&self) -> impl Stream<Item = Result<Event>> + use<> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                [
                    "start",
                    "die",
                    "stop",
                    "kill",
                    "pause",
                    "unpause",
                    "destroy",
                    "health_status",
                    "rename",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        self.docker.events(Some(options)).map(|e| {
            let e = e?;
            let actor = e.actor.unwrap_or_default();
            let project = actor
                .attributes
                .as_ref()
                .and_then(|a| a.get("com.docker.compose.project").cloned());
            Ok(Event {
                action: e.action.unwrap_or_default(),
                id: actor.id.unwrap_or_default(),
                project,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_times_sort_in_time_order() {
        let times = [
            "2026-12-07T22:13:05Z",
            "2026-12-07T22:13:05.0001Z",
            "2026-12-07T22:13:05.1234Z",
            "2026-12-07T22:13:05.123456789Z",
            "2026-12-07T22:13:05.9Z",
            "2026-12-07T22:13:06.01Z",
        ];
        let sorted: Vec<String> = times.iter().map(|t| sortable_time(t)).collect();
        assert!(sorted.windows(2).all(|w| w[0] < w[1]), "{sorted:?}");
    }

    #[test]
    fn health_from_the_status_line() {
        assert_eq!(health_of("Up 3 minutes (healthy)"), Health::Healthy);
        assert_eq!(health_of("Up 1 second (health: starting)"), Health::Starting);
        assert_eq!(health_of("Up 2 hours (unhealthy)"), Health::Unhealthy);
        assert_eq!(health_of("Up 2 hours"), Health::None);
    }
}
