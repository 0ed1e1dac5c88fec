//! The Docker Engine over its unix socket, at the API version both sides
//! speak (Engine 20.10 speaks 1.41; today's 27–29 speak 1.44 and up): the
//! running containers as Routehub needs them, and a stream of the events
//! that change them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
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
}

impl Container {
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
        })
    }
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

    /// Every running container.
    pub async fn running(&self) -> Result<Vec<Container>> {
        let options = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        let list = self.docker.list_containers(Some(options)).await?;
        Ok(list.into_iter().filter_map(Container::from_summary).collect())
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
            Ok(Event {
                action: e.action.unwrap_or_default(),
                id: e.actor.and_then(|a| a.id).unwrap_or_default(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_the_status_line() {
        assert_eq!(health_of("Up 3 minutes (healthy)"), Health::Healthy);
        assert_eq!(health_of("Up 1 second (health: starting)"), Health::Starting);
        assert_eq!(health_of("Up 2 hours (unhealthy)"), Health::Unhealthy);
        assert_eq!(health_of("Up 2 hours"), Health::None);
    }
}
