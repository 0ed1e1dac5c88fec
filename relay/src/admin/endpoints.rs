//! What the admin listener serves: every endpoint, its OpenAPI path and
//! the methods it answers. The router goes through [`Endpoint::find`], so
//! this list is the router's; a test holds `openapi.json` to it.

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Dashboard,
    DashboardIndex,
    OpenApi,
    Healthz,
    Routes,
    Route,
    History,
    VersionRoutes,
    Rollback,
    Health,
    Status,
    Events,
    Composes,
    Compose,
    ComposeVersions,
    ComposeVersion,
    ComposeDiff,
    ComposeDeployments,
    ComposeRollback,
    ComposeLogs,
    Deployment,
}

impl Endpoint {
    /// Every endpoint (see the `every_endpoint_is_listed` test).
    #[cfg(test)]
    pub const ALL: [Endpoint; 21] = [
        Endpoint::Dashboard,
        Endpoint::DashboardIndex,
        Endpoint::OpenApi,
        Endpoint::Healthz,
        Endpoint::Routes,
        Endpoint::Route,
        Endpoint::History,
        Endpoint::VersionRoutes,
        Endpoint::Rollback,
        Endpoint::Health,
        Endpoint::Status,
        Endpoint::Events,
        Endpoint::Composes,
        Endpoint::Compose,
        Endpoint::ComposeVersions,
        Endpoint::ComposeVersion,
        Endpoint::ComposeDiff,
        Endpoint::ComposeDeployments,
        Endpoint::ComposeRollback,
        Endpoint::ComposeLogs,
        Endpoint::Deployment,
    ];

    /// The endpoint serving `path`, if any (a trailing `/` is ignored
    /// under `/api/`).
    pub fn find(path: &str) -> Option<Endpoint> {
        let endpoint = match path {
            "/" => Endpoint::Dashboard,
            "/index.html" => Endpoint::DashboardIndex,
            "/openapi.json" => Endpoint::OpenApi,
            "/healthz" => Endpoint::Healthz,
            _ => {
                let api = path.strip_prefix("/api/")?.trim_end_matches('/');
                let segments: Vec<&str> = api.split('/').collect();
                match segments.as_slice() {
                    ["routes"] => Endpoint::Routes,
                    ["routes", _] => Endpoint::Route,
                    ["history"] => Endpoint::History,
                    ["versions", _, "routes"] => Endpoint::VersionRoutes,
                    ["rollback"] => Endpoint::Rollback,
                    ["health"] => Endpoint::Health,
                    ["status"] => Endpoint::Status,
                    ["events"] => Endpoint::Events,
                    ["composes"] => Endpoint::Composes,
                    ["composes", _] => Endpoint::Compose,
                    ["composes", _, "versions"] => Endpoint::ComposeVersions,
                    ["composes", _, "versions", _] => Endpoint::ComposeVersion,
                    ["composes", _, "diff"] => Endpoint::ComposeDiff,
                    ["composes", _, "deployments"] => Endpoint::ComposeDeployments,
                    ["composes", _, "rollback"] => Endpoint::ComposeRollback,
                    ["composes", _, "logs"] => Endpoint::ComposeLogs,
                    ["deployments", _] => Endpoint::Deployment,
                    _ => return None,
                }
            }
        };
        Some(endpoint)
    }

    /// The path as `openapi.json` names it.
    pub fn template(self) -> &'static str {
        match self {
            Endpoint::Dashboard => "/",
            Endpoint::DashboardIndex => "/index.html",
            Endpoint::OpenApi => "/openapi.json",
            Endpoint::Healthz => "/healthz",
            Endpoint::Routes => "/api/routes",
            Endpoint::Route => "/api/routes/{id}",
            Endpoint::History => "/api/history",
            Endpoint::VersionRoutes => "/api/versions/{version}/routes",
            Endpoint::Rollback => "/api/rollback",
            Endpoint::Health => "/api/health",
            Endpoint::Status => "/api/status",
            Endpoint::Events => "/api/events",
            Endpoint::Composes => "/api/composes",
            Endpoint::Compose => "/api/composes/{name}",
            Endpoint::ComposeVersions => "/api/composes/{name}/versions",
            Endpoint::ComposeVersion => "/api/composes/{name}/versions/{version}",
            Endpoint::ComposeDiff => "/api/composes/{name}/diff",
            Endpoint::ComposeDeployments => "/api/composes/{name}/deployments",
            Endpoint::ComposeRollback => "/api/composes/{name}/rollback",
            Endpoint::ComposeLogs => "/api/composes/{name}/logs",
            Endpoint::Deployment => "/api/deployments/{id}",
        }
    }

    /// Methods answered; any other gets 405 with these in `Allow`.
    pub fn methods(self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const GET_POST: &[Method] = &[Method::GET, Method::POST];
        const POST: &[Method] = &[Method::POST];
        const GET_PATCH_DELETE: &[Method] = &[Method::GET, Method::PATCH, Method::DELETE];
        const GET_DELETE: &[Method] = &[Method::GET, Method::DELETE];
        match self {
            Endpoint::Routes | Endpoint::Composes => GET_POST,
            Endpoint::Compose => GET_DELETE,
            Endpoint::ComposeRollback => POST,
            Endpoint::Route => GET_PATCH_DELETE,
            Endpoint::Rollback => POST,
            Endpoint::Dashboard
            | Endpoint::DashboardIndex
            | Endpoint::OpenApi
            | Endpoint::Healthz
            | Endpoint::History
            | Endpoint::VersionRoutes
            | Endpoint::Health
            | Endpoint::Status
            | Endpoint::Events
            | Endpoint::ComposeVersions
            | Endpoint::ComposeVersion
            | Endpoint::ComposeDiff
            | Endpoint::ComposeDeployments
            | Endpoint::ComposeLogs
            | Endpoint::Deployment => GET,
        }
    }

    /// Whether the bearer token is required.
    pub fn needs_token(self) -> bool {
        self.template().starts_with("/api/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_listed_and_found_by_its_own_path() {
        // Does not compile when a variant is added without a line here:
        // then add it to `ALL` too.
        fn listed(e: Endpoint) -> bool {
            match e {
                Endpoint::Dashboard
                | Endpoint::DashboardIndex
                | Endpoint::OpenApi
                | Endpoint::Healthz
                | Endpoint::Routes
                | Endpoint::Route
                | Endpoint::History
                | Endpoint::VersionRoutes
                | Endpoint::Rollback
                | Endpoint::Health
                | Endpoint::Status
                | Endpoint::Events
                | Endpoint::Composes
                | Endpoint::Compose
                | Endpoint::ComposeVersions
                | Endpoint::ComposeVersion
                | Endpoint::ComposeDiff
                | Endpoint::ComposeDeployments
                | Endpoint::ComposeRollback
                | Endpoint::ComposeLogs
                | Endpoint::Deployment => Endpoint::ALL.contains(&e),
            }
        }
        for e in Endpoint::ALL {
            assert!(listed(e));
            let path = e
                .template()
                .replace("{id}", "7")
                .replace("{version}", "3")
                .replace("{name}", "web");
            assert_eq!(Endpoint::find(&path), Some(e), "{path}");
        }
        for unknown in ["/api/", "/api/routes/1/x", "/api/nope", "/favicon.ico", "/apix/routes"] {
            assert_eq!(Endpoint::find(unknown), None, "{unknown}");
        }
        assert_eq!(Endpoint::find("/api/routes/"), Some(Endpoint::Routes));
    }
}
