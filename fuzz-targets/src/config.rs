//! The TOML configs of gateway and relay, the relay's `--route` flags and
//! the routes its admin API takes as JSON.

use gateway::GatewayConfig;
use gateway::config::HttpListen;
use relay::model::{NewRoute, Route, RoutePatch, validate};
use relay::target::Target;
use relay::{GatewayAddr, RelayConfig, RouteConfig};
use tunnel_proto::limits::{MAX_HEARTBEAT, MIN_HEARTBEAT};
use tunnel_proto::names::normalize_hostname;
use tunnel_proto::{HostPattern, RoutePolicy, RouteSpec};

/// A gateway config file.
///
/// Invariants: validation is a fixed point (names normalised once stay
/// so) and leaves values within their bounds.
pub fn gateway_config(data: &[u8]) {
    let text = crate::text(data);
    for line in text.lines() {
        if let Ok(listen) = line.parse::<HttpListen>() {
            let printed = match listen {
                HttpListen::Auto => "auto".to_owned(),
                HttpListen::Off => "off".to_owned(),
                HttpListen::At(addr) => addr.to_string(),
            };
            assert_eq!(printed.parse::<HttpListen>(), Ok(listen));
        }
    }
    let Ok(config) = toml::from_str::<GatewayConfig>(&text) else {
        return;
    };
    let _ = config.http_addr();
    if let Some(acme) = &config.acme {
        let _ = acme.to_certs(true);
        let _ = format!("{acme:?}");
    }
    let Ok(valid) = config.validate() else { return };
    assert!(!valid.names.is_empty());
    for n in &valid.names {
        assert_eq!(normalize_hostname(n).ok().as_ref(), Some(n));
    }
    assert!((MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&valid.heartbeat()));
    let names = valid.names.clone();
    let again = valid.validate().expect("a validated config validates again");
    assert_eq!(again.names, names);
}

/// A relay config file.
///
/// Invariants: each gateway address that parses prints as an address that
/// parses to the same; each route that validates is a fixed point of
/// validation and announces a spec the gateway validates unchanged.
pub fn relay_config(data: &[u8]) {
    let text = crate::text(data);
    let Ok(config) = toml::from_str::<RelayConfig>(&text) else {
        return;
    };
    for g in config.gateways.iter().flat_map(|g| g.split(',')) {
        check_gateway_addr(g.trim(), config.server_name.as_deref());
    }
    for route in &config.routes {
        check_route(route.to_new_route());
    }
}

/// A gateway address as the relay config, its `--gateway` flag or a
/// gateway's `Welcome` (a peer) gives it.
fn check_gateway_addr(s: &str, server_name: Option<&str>) {
    let Ok(addr) = GatewayAddr::parse(s, server_name) else {
        return;
    };
    let printed = addr.to_string();
    let again = GatewayAddr::parse(&printed, server_name)
        .unwrap_or_else(|e| panic!("{s:?} prints as {printed:?}, which does not parse: {e}"));
    assert_eq!(
        (&again.host, again.port, &again.server_name),
        (&addr.host, addr.port, &addr.server_name),
        "{s:?} prints as {printed:?}, which parses differently"
    );
}

/// Relay `--route` flags (one a line), targets, gateway addresses, then
/// the whole input as the admin API's route JSON.
///
/// Invariants: as [`relay_config`]'s, and a route patch survives the JSON
/// round trip the CLI and the admin client rely on (absent fields stay
/// absent, `null` stays a removal).
pub fn relay_route(data: &[u8]) {
    let text = crate::text(data);
    for line in text.lines() {
        if let Ok(route) = line.parse::<RouteConfig>() {
            check_route(route.to_new_route());
        }
        if let Ok(t) = Target::parse(line) {
            check_target(&t);
        }
        check_gateway_addr(line, None);
        check_gateway_addr(line, Some("gw.example.com"));
    }
    if let Ok(new) = serde_json::from_slice::<NewRoute>(data) {
        check_route(new);
    }
    if let Ok(patch) = serde_json::from_slice::<RoutePatch>(data) {
        let wire = serde_json::to_value(&patch).expect("a patch serialises");
        let back: RoutePatch = serde_json::from_value(wire.clone()).expect("a serialised patch parses");
        assert_eq!(back, patch, "a patch changed on its way through {wire}");
        check_route(patch.apply(&existing_route()));
    }
}

/// A stored route a patch applies to.
fn existing_route() -> Route {
    Route {
        id: 1,
        host: "app.test".into(),
        path: "/".into(),
        priority: 0,
        target: "http://127.0.0.1:3000".into(),
        policy: serde_json::json!({ "auth": "jwt" }),
        middlewares: Vec::new(),
        health: None,
        enabled: true,
        created_at: String::new(),
        updated_at: String::new(),
        owner: None,
    }
}

fn check_target(t: &Target) {
    assert_eq!(t.url, format!("http://{}", t.authority));
    assert!(t.authority.port_u16().is_some(), "{} has no usable port", t.url);
    assert_eq!(Target::parse(&t.url).as_ref(), Ok(t), "{} re-parses differently", t.url);
}

/// A route as the relay's store would take it.
fn check_route(mut new: NewRoute) {
    if validate(&mut new).is_err() {
        return;
    }
    let mut again = new.clone();
    validate(&mut again).expect("a validated route validates again");
    assert_eq!(again, new, "validation is not a fixed point");
    let target = Target::parse(&new.target).expect("a validated target parses");
    assert_eq!(target.url, new.target);
    check_target(&target);
    let pattern = HostPattern::parse(&new.host).expect("a validated host parses");
    crate::names::check_pattern(&pattern);
    if let Some(h) = &new.health {
        let uri = format!("{}{}", target.url, h.path);
        assert!(
            uri.parse::<http::Uri>().is_ok(),
            "health check path {:?} makes no request URI",
            h.path
        );
    }
    // What the relay announces is what the gateway serves.
    let spec = RouteSpec {
        id: 1,
        host: new.host.clone(),
        path_prefix: new.path.clone(),
        priority: new.priority,
        policy: RoutePolicy::from_json(&new.policy).expect("a validated policy parses"),
    };
    assert_eq!(
        spec.clone().validated().ok().as_ref(),
        Some(&spec),
        "the gateway changes a route the relay validated"
    );
    crate::routes::check_spec(spec);
}
