//! What the store keeps of compose deployments, as the admin API and CLI
//! show it: composes, their immutable versions, and deployments (one
//! version going live, with its outcome, output, image identities and the
//! health of its services along the way).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most health transitions one deployment keeps (the newest).
pub const MAX_HEALTH_EVENTS: usize = 200;
/// Most bytes of compose CLI output one deployment keeps (the end).
pub const MAX_DEPLOY_OUTPUT: usize = deploy::compose::MAX_OUTPUT;
/// What a secret's value reads as wherever it would otherwise appear.
pub const MASK: &str = "********";

/// A compose app: a name and the history of its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compose {
    pub id: u64,
    pub name: String,
    pub description: String,
    /// The newest version.
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// One version of a compose, never changed once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeVersion {
    pub compose_id: u64,
    pub version: u64,
    /// The file as given.
    pub yaml: String,
    /// The configuration the compose CLI resolved it to, secret values
    /// masked.
    pub resolved: String,
    /// Names of the secrets given with it; their values are sealed apart.
    pub secret_names: Vec<String>,
    pub actor: String,
    pub created_at: String,
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    Pending,
    Deploying,
    /// Every service ready: it is (or was) what serves.
    Healthy,
    Failed,
    /// Failed, and the previous healthy deployment serves again.
    RolledBack,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Pending => "pending",
            DeployStatus::Deploying => "deploying",
            DeployStatus::Healthy => "healthy",
            DeployStatus::Failed => "failed",
            DeployStatus::RolledBack => "rolled_back",
        }
    }

    /// Whether the deployment is over.
    pub fn is_final(self) -> bool {
        !matches!(self, DeployStatus::Pending | DeployStatus::Deploying)
    }
}

impl std::str::FromStr for DeployStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => DeployStatus::Pending,
            "deploying" => DeployStatus::Deploying,
            "healthy" => DeployStatus::Healthy,
            "failed" => DeployStatus::Failed,
            "rolled_back" => DeployStatus::RolledBack,
            other => return Err(format!("unknown deployment status {other:?}")),
        })
    }
}

/// The image a service ran: what the compose file named, the local image
/// ID, and the registry digest where the image has one. A rollback pins
/// the digest, else the ID, so it runs these bytes whatever the tag says
/// by then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageIdentity {
    pub image: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ImageIdentity {
    /// What a rollback asks compose to run.
    pub fn pinned(&self) -> &str {
        self.digest.as_deref().unwrap_or(&self.id)
    }
}

/// A service's state as a deployment saw it change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEvent {
    pub at: String,
    pub service: String,
    /// `starting`, `healthy`, `completed`, `crash loop`, ...
    pub state: String,
}

/// One version of a compose going live: an immutable record of what ran,
/// who asked, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub id: u64,
    pub compose: String,
    pub version: u64,
    /// Its compose project is `routehub_<compose>_<generation>`.
    pub generation: u64,
    pub status: DeployStatus,
    /// Why it ran: `apply`, `rollback to version 2`, `automatic rollback
    /// after deployment 7`.
    pub reason: String,
    /// Why it failed, or what happened after (empty otherwise).
    pub detail: String,
    /// By service.
    pub images: BTreeMap<String, ImageIdentity>,
    /// The compose CLI's output (its end, [`MAX_DEPLOY_OUTPUT`] bytes).
    pub output: String,
    /// Health transitions of its services, oldest first (the newest
    /// [`MAX_HEALTH_EVENTS`]).
    pub health: Vec<ServiceEvent>,
    pub actor: String,
    pub created_at: String,
    pub updated_at: String,
}

/// What the store's event feed says of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployEvent {
    pub compose: String,
    pub deployment: Option<u64>,
    pub status: Option<DeployStatus>,
}

/// Keeps the end of `text`, at most `max` bytes, cut at a character.
pub fn keep_end(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_and_output_keeps_its_end() {
        for s in [
            DeployStatus::Pending,
            DeployStatus::Deploying,
            DeployStatus::Healthy,
            DeployStatus::Failed,
            DeployStatus::RolledBack,
        ] {
            assert_eq!(s.as_str().parse::<DeployStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("done".parse::<DeployStatus>().is_err());
        assert_eq!(keep_end("abcdef", 3), "def");
        assert_eq!(keep_end("aé", 1), "");
        assert_eq!(keep_end("abc", 10), "abc");
    }
}
