//! What the relay's store holds, as the admin API and CLI show it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tunnel_proto::path::normalize_path_prefix;
use tunnel_proto::{HostPattern, RoutePolicy, RouteSpec};

use crate::target::Target;

/// A route: requests for `host` under `path` go to `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: u64,
    pub host: String,
    pub path: String,
    pub priority: i32,
    pub target: String,
    /// Access policy, enforced by the gateway (`null`: public).
    pub policy: Value,
    /// Middleware settings (JSON array; none are supported yet, so empty).
    pub middlewares: Vec<Value>,
    pub health: Option<HealthCheck>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
    /// `container:<name>` for a route made from that container's labels
    /// (kept in step with the container); none for every other route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Route {
    /// What gateways are told (the target stays on the relay).
    pub fn spec(&self) -> RouteSpec {
        RouteSpec {
            id: self.id,
            host: self.host.clone(),
            path_prefix: self.path.clone(),
            priority: self.priority,
            // Checked when stored; the route set leaves out a route whose
            // policy no longer parses, so this never widens access.
            policy: RoutePolicy::from_json(&self.policy).ok().flatten(),
        }
    }

    /// The route without timestamps: what versions and rollbacks compare.
    pub fn content(&self) -> Value {
        let mut content = serde_json::json!({
            "id": self.id, "host": self.host, "path": self.path, "priority": self.priority,
            "target": self.target, "policy": self.policy, "middlewares": self.middlewares,
            "health": self.health, "enabled": self.enabled,
        });
        // Only where set: the checksums of sets without owners stay as they were.
        if let Some(owner) = &self.owner {
            content["owner"] = owner.as_str().into();
        }
        content
    }

    /// `host/path` for messages.
    pub fn name(&self) -> String {
        if self.path == "/" {
            self.host.clone()
        } else {
            format!("{}{}", self.host, self.path)
        }
    }
}

/// An HTTP health check the relay runs against the route's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default = "root")]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures before the route is unhealthy.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_after: u32,
    /// Consecutive successes before it is healthy again.
    #[serde(default = "default_healthy")]
    pub healthy_after: u32,
}

fn root() -> String {
    "/".into()
}
fn default_interval() -> u64 {
    10
}
fn default_timeout() -> u64 {
    2000
}
fn default_unhealthy() -> u32 {
    3
}
fn default_healthy() -> u32 {
    2
}
fn yes() -> bool {
    true
}

/// A route to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    pub host: String,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub priority: i32,
    pub target: String,
    #[serde(default)]
    pub policy: Value,
    #[serde(default)]
    pub middlewares: Vec<Value>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Set by label sync only; no API, flag or file can.
    #[serde(skip)]
    pub owner: Option<String>,
}

/// Fields to change on a route; absent fields stay. `"health": null`
/// removes the health check and `"policy": null` removes the policy (the
/// route becomes public). Absent fields are left out when serialised, so a
/// client sending a patch never clears what it did not mention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `Some(Value::Null)`: remove the policy. Plain `Option<Value>` would
    /// read `null` as absent and silently keep the old policy.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middlewares: Option<Vec<Value>>,
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    pub health: Option<Option<HealthCheck>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// A new owner (label sync only).
    #[serde(skip)]
    pub owner: Option<String>,
}

/// A field that is present, `null` included (absent fields take `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }

    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
}

/// One entry of the audit log: what changed, by whom, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub version: u64,
    pub at: String,
    pub actor: String,
    pub action: ChangeAction,
    pub route_id: Option<u64>,
    /// The route (or, for a rollback, every route) before and after.
    pub before: Value,
    pub after: Value,
    /// SHA-256 (hex) of the whole route set after this change.
    pub checksum: String,
}

/// What a change did. Stored, sent and shown as the words `add`,
/// `update`, `remove` and `rollback`; any other word is an error where it
/// is read (a store or an API answer from a newer build), never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    /// A route was created.
    Add,
    /// A route's fields changed.
    Update,
    /// A route was removed.
    Remove,
    /// The whole set was made what it was at an earlier version.
    Rollback,
}

impl ChangeAction {
    /// The word it is stored and shown as.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Add => "add",
            ChangeAction::Update => "update",
            ChangeAction::Remove => "remove",
            ChangeAction::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for ChangeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for ChangeAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "add" => Ok(ChangeAction::Add),
            "update" => Ok(ChangeAction::Update),
            "remove" => Ok(ChangeAction::Remove),
            "rollback" => Ok(ChangeAction::Rollback),
            other => Err(format!(
                "unknown change action {:?}",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

impl PartialEq<str> for ChangeAction {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ChangeAction {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Latest health-check result of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub route_id: u64,
    /// The route is served (`healthy` or `failing`).
    pub healthy: bool,
    /// `healthy`; `failing` (the last checks failed, fewer than
    /// `unhealthy_after` so far: still served); `unhealthy`; `recovering`
    /// (the last checks passed, fewer than `healthy_after`: not served yet).
    pub status: String,
    /// The last check's outcome: `ok` or what went wrong.
    pub detail: String,
    /// Consecutive checks with the last one's outcome.
    pub streak: u32,
    pub updated_at: String,
}

/// Whether a stored health `status` means the route is served.
pub fn status_is_served(status: &str) -> bool {
    matches!(status, "healthy" | "failing")
}

/// Why a route is invalid.
pub type Invalid = String;

/// Normalises and checks a route's fields.
pub fn validate(new: &mut NewRoute) -> Result<(), Invalid> {
    new.host = HostPattern::parse(&new.host).map_err(|e| e.to_string())?.to_string();
    new.path = normalize_path_prefix(&new.path).map_err(|e| e.to_string())?;
    new.target = Target::parse(&new.target)?.url;
    // Stored normalised, so what the store shows is what gateways enforce.
    new.policy = match RoutePolicy::from_json(&new.policy).map_err(|e| e.to_string())? {
        Some(p) => serde_json::to_value(p).map_err(|e| e.to_string())?,
        None => Value::Null,
    };
    if !new.middlewares.is_empty() {
        // Stored settings the gateway ignored would look like protection.
        return Err("middlewares are not supported yet".into());
    }
    if let Some(h) = &new.health {
        if !h.path.starts_with('/') || h.path.len() > 1024 {
            return Err("health.path must start with '/'".into());
        }
        // The probe requests exactly this; a path that makes no URI would
        // leave the route unhealthy for good.
        if format!("{}{}", new.target, h.path).parse::<http::Uri>().is_err() {
            return Err("health.path must be a URL path (no spaces or other characters to escape)".into());
        }
        if !(1..=3600).contains(&h.interval_secs) {
            return Err("health.interval_secs must be 1..=3600".into());
        }
        if !(100..=60_000).contains(&h.timeout_ms) {
            return Err("health.timeout_ms must be 100..=60000".into());
        }
        if !(1..=100).contains(&h.unhealthy_after) || !(1..=100).contains(&h.healthy_after) {
            return Err("health thresholds must be 1..=100".into());
        }
    }
    Ok(())
}

impl RoutePatch {
    /// The route with this patch applied, as a `NewRoute` to validate.
    pub fn apply(self, r: &Route) -> NewRoute {
        NewRoute {
            host: self.host.unwrap_or_else(|| r.host.clone()),
            path: self.path.unwrap_or_else(|| r.path.clone()),
            priority: self.priority.unwrap_or(r.priority),
            target: self.target.unwrap_or_else(|| r.target.clone()),
            policy: self.policy.unwrap_or_else(|| r.policy.clone()),
            middlewares: self.middlewares.unwrap_or_else(|| r.middlewares.clone()),
            health: self.health.unwrap_or_else(|| r.health.clone()),
            enabled: self.enabled.unwrap_or(r.enabled),
            owner: self.owner.or_else(|| r.owner.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(serde_json::from_str::<NewRoute>(r#"{"host":"a.test","target":"http://x:1","typo":1}"#).is_err());
        let mut ok: NewRoute = serde_json::from_str(r#"{"host":"A.test","path":"/api/","target":"8080"}"#).unwrap();
        validate(&mut ok).unwrap();
        assert_eq!(
            (ok.host.as_str(), ok.path.as_str(), ok.target.as_str()),
            ("a.test", "/api", "http://127.0.0.1:8080")
        );
        for bad in [
            r#"{"host":"bad host","target":"8080"}"#,
            r#"{"host":"a.test","target":"ftp://x"}"#,
            r#"{"host":"a.test","target":"8080","health":{"interval_secs":0}}"#,
            r#"{"host":"a.test","target":"8080","policy":5}"#,
            r#"{"host":"a.test","target":"8080","middlewares":[{"strip_prefix":"/api"}]}"#,
        ] {
            let mut r: NewRoute = serde_json::from_str(bad).unwrap();
            assert!(validate(&mut r).is_err(), "{bad}");
        }
    }

    /// The probe requests `target + health.path`: a path that makes no
    /// request URI would leave the route unhealthy forever.
    #[test]
    fn a_health_path_is_one_the_probe_can_request() {
        for path in ["/healthz{ ", "/a b", "/a\\u0000"] {
            let json = format!(r#"{{"host":"a.test","target":"8080","health":{{"path":"{path}"}}}}"#);
            let mut r: NewRoute = serde_json::from_str(&json).unwrap();
            assert!(validate(&mut r).is_err(), "{path:?} accepted");
        }
        for path in ["/", "/healthz", "/health?full=1", "//x", "/a%20b"] {
            let json = format!(r#"{{"host":"a.test","target":"8080","health":{{"path":"{path}"}}}}"#);
            let mut r: NewRoute = serde_json::from_str(&json).unwrap();
            validate(&mut r).unwrap();
        }
    }

    #[test]
    fn change_actions_read_back_as_the_words_they_were_stored_as() {
        for action in [
            ChangeAction::Add,
            ChangeAction::Update,
            ChangeAction::Remove,
            ChangeAction::Rollback,
        ] {
            assert_eq!(action.as_str().parse::<ChangeAction>(), Ok(action));
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
        let err = "frobnicate".parse::<ChangeAction>().unwrap_err();
        assert!(err.contains("unknown change action \"frobnicate\""), "{err}");
        assert!(serde_json::from_str::<ChangeAction>("\"frobnicate\"").is_err());
    }

    #[test]
    fn patch_null_health_removes_it_absent_keeps_it() {
        let p: RoutePatch = serde_json::from_str(r#"{"health":null}"#).unwrap();
        assert_eq!(p.health, Some(None));
        let p: RoutePatch = serde_json::from_str(r#"{"priority":3}"#).unwrap();
        assert_eq!(p.health, None);
    }

    fn checked_route() -> Route {
        Route {
            id: 1,
            host: "a.test".into(),
            path: "/".into(),
            priority: 0,
            target: "http://127.0.0.1:1".into(),
            policy: serde_json::json!({ "auth": "jwt" }),
            middlewares: Vec::new(),
            health: Some(serde_json::from_str("{}").unwrap()),
            enabled: true,
            created_at: String::new(),
            updated_at: String::new(),
            owner: None,
        }
    }

    #[test]
    fn a_serialised_patch_carries_only_the_fields_set() {
        // What the CLI and the admin client send for `edit --target`: the
        // server must keep the health check and the policy.
        let patch = RoutePatch {
            target: Some("http://127.0.0.1:2".into()),
            ..Default::default()
        };
        let wire = serde_json::to_value(&patch).unwrap();
        assert_eq!(wire, serde_json::json!({ "target": "http://127.0.0.1:2" }));
        let received: RoutePatch = serde_json::from_value(wire).unwrap();
        assert_eq!(received, patch, "round trip");
        let edited = received.apply(&checked_route());
        assert_eq!(edited.health, checked_route().health, "health kept");
        assert_eq!(edited.policy, checked_route().policy, "policy kept");
        // Explicit removals survive the round trip too.
        let removal = RoutePatch {
            health: Some(None),
            policy: Some(Value::Null),
            ..Default::default()
        };
        let wire = serde_json::to_value(&removal).unwrap();
        assert_eq!(wire, serde_json::json!({ "health": null, "policy": null }));
        assert_eq!(serde_json::from_value::<RoutePatch>(wire).unwrap(), removal);
    }

    #[test]
    fn patch_null_policy_makes_the_route_public_absent_keeps_it() {
        let p: RoutePatch = serde_json::from_str(r#"{"policy":null}"#).unwrap();
        assert_eq!(p.policy, Some(Value::Null));
        assert_eq!(p.apply(&checked_route()).policy, Value::Null);
        let p: RoutePatch = serde_json::from_str(r#"{"priority":3}"#).unwrap();
        assert_eq!(p.policy, None);
        assert_eq!(p.apply(&checked_route()).policy, checked_route().policy);
    }
}
