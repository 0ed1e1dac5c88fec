//! Routes asked for by container labels, Routehub's own or Traefik's:
//!
//! ```text
//! routehub.host=app.example.com      routehub.path=/api (default /)
//! routehub.port=8080 (default: the lowest exposed port)
//! routehub.policy={"auth":"jwt"}     (the route's access policy, JSON)
//!
//! traefik.http.routers.<r>.rule=Host(`app.example.com`) && PathPrefix(`/api`)
//! traefik.http.routers.<r>.service=<s>
//! traefik.http.services.<s>.loadbalancer.server.port=8080
//! ```
//!
//! Pure: labels in, routes and reasons out. Labels are hostile input (any
//! image can carry any label), so every value is bounded here and checked
//! again as any route is when the relay stores it.

use std::collections::BTreeMap;

/// Longest label value read; longer ones are refused, not cut.
pub const MAX_LABEL_VALUE: usize = 4096;
/// Most routes one container may ask for.
pub const MAX_ROUTES_PER_CONTAINER: usize = 32;

/// A route a container's labels ask for; the target is the container's
/// address and `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRoute {
    pub host: String,
    pub path: String,
    pub port: u16,
    /// `routehub.policy`, as written (checked when stored).
    pub policy: Option<String>,
    /// Which labels asked for it: `routehub` or `traefik router <r>`.
    pub source: String,
}

/// The routes `labels` ask for, and why any that were asked for are left
/// out. `exposed` are the container's exposed TCP ports (for the default).
pub fn routes_of(labels: &BTreeMap<String, String>, exposed: &[u16]) -> (Vec<LabelRoute>, Vec<String>) {
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    let default_port = exposed.iter().copied().filter(|p| *p != 0).min();
    if let Some(host) = labels.get("routehub.host") {
        match routehub_routes(labels, host, default_port) {
            Ok(r) => routes.extend(r),
            Err(e) => problems.push(format!("routehub labels: {e}")),
        }
    }
    if labels.get("traefik.enable").map(|v| v.trim()) != Some("false") {
        for router in traefik_routers(labels) {
            match traefik_routes(labels, router, default_port) {
                Ok(r) => routes.extend(r),
                Err(e) => problems.push(format!("traefik router {router}: {e}")),
            }
        }
    }
    if routes.len() > MAX_ROUTES_PER_CONTAINER {
        problems.push(format!(
            "{} routes asked for; at most {MAX_ROUTES_PER_CONTAINER} per container are taken",
            routes.len()
        ));
        routes.truncate(MAX_ROUTES_PER_CONTAINER);
    }
    (routes, problems)
}

fn value(s: &str) -> Result<&str, String> {
    if s.len() > MAX_LABEL_VALUE {
        return Err(format!("a label value of {} bytes (limit {MAX_LABEL_VALUE})", s.len()));
    }
    Ok(s.trim())
}

fn port(s: &str) -> Result<u16, String> {
    match value(s)?.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {s:?} is not a number from 1 to 65535")),
    }
}

fn port_or(label: Option<&String>, default: Option<u16>) -> Result<u16, String> {
    match label {
        Some(p) => port(p),
        None => default.ok_or_else(|| "no port label and no exposed port".to_owned()),
    }
}

fn routehub_routes(
    labels: &BTreeMap<String, String>,
    hosts: &str,
    default_port: Option<u16>,
) -> Result<Vec<LabelRoute>, String> {
    let port = port_or(labels.get("routehub.port"), default_port)?;
    let path = match labels.get("routehub.path") {
        Some(p) => value(p)?.to_owned(),
        None => "/".to_owned(),
    };
    let policy = labels
        .get("routehub.policy")
        .map(|p| value(p).map(str::to_owned))
        .transpose()?;
    // Several hosts may share one container: `a.example.com,b.example.com`.
    let hosts: Vec<&str> = value(hosts)?
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err("routehub.host is empty".into());
    }
    Ok(hosts
        .into_iter()
        .map(|host| LabelRoute {
            host: host.to_ascii_lowercase(),
            path: path.clone(),
            port,
            policy: policy.clone(),
            source: "routehub".into(),
        })
        .collect())
}

/// Router names with a rule, in order.
fn traefik_routers(labels: &BTreeMap<String, String>) -> Vec<&str> {
    labels
        .keys()
        .filter_map(|k| k.strip_prefix("traefik.http.routers.")?.strip_suffix(".rule"))
        .filter(|r| !r.is_empty() && !r.contains('.'))
        .collect()
}

fn traefik_routes(
    labels: &BTreeMap<String, String>,
    router: &str,
    default_port: Option<u16>,
) -> Result<Vec<LabelRoute>, String> {
    let rule = value(&labels[&format!("traefik.http.routers.{router}.rule")])?;
    let alternatives = parse_rule(rule)?;
    // The router's service, or the only service the labels define.
    let service_port = |s: &str| labels.get(&format!("traefik.http.services.{s}.loadbalancer.server.port"));
    let port = match labels.get(&format!("traefik.http.routers.{router}.service")) {
        Some(s) => port_or(service_port(value(s)?), default_port)?,
        None => {
            let services: Vec<&str> = labels
                .keys()
                .filter_map(|k| {
                    k.strip_prefix("traefik.http.services.")?
                        .strip_suffix(".loadbalancer.server.port")
                })
                .collect();
            match services.as_slice() {
                [only] => port_or(service_port(only), default_port)?,
                _ => port_or(None, default_port)?,
            }
        }
    };
    let mut routes = Vec::new();
    for alt in alternatives {
        let paths = alt.paths.unwrap_or_else(|| vec!["/".to_owned()]);
        for host in alt.hosts.unwrap_or_default() {
            for path in &paths {
                routes.push(LabelRoute {
                    host: host.to_ascii_lowercase(),
                    path: path.clone(),
                    port,
                    policy: None,
                    source: format!("traefik router {router}"),
                });
            }
        }
    }
    Ok(routes)
}

/// One way a rule can match: these hosts under these path prefixes.
#[derive(Debug, Clone, Default, PartialEq)]
struct Alternative {
    hosts: Option<Vec<String>>,
    paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
    And,
    Or,
}

fn tokens(rule: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = rule.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            '&' | '|' => {
                if chars.next_if(|&(_, n)| n == c).is_none() {
                    return Err(format!("a lone {c:?} at {i}"));
                }
                out.push(if c == '&' { Token::And } else { Token::Or });
            }
            '`' | '"' => {
                let end = rule[i + 1..].find(c).ok_or_else(|| format!("unclosed {c} at {i}"))?;
                out.push(Token::Text(rule[i + 1..i + 1 + end].to_owned()));
                while chars.next_if(|&(j, _)| j <= i + 1 + end).is_some() {}
            }
            c if c.is_ascii_alphanumeric() => {
                let mut word = String::from(c);
                while let Some((_, n)) = chars.next_if(|&(_, n)| n.is_ascii_alphanumeric()) {
                    word.push(n);
                }
                out.push(Token::Word(word));
            }
            other => {
                return Err(format!(
                    "{other:?} at {i} is not supported (only Host, PathPrefix, &&, ||)"
                ));
            }
        }
    }
    Ok(out)
}

/// Parses the part of Traefik's rule language a route can hold: `Host`
/// and `PathPrefix` matchers joined by `&&` and `||`, with parentheses.
/// Anything else (`Path`, regexps, headers, `!`) is refused by name rather
/// than routed wider than the rule says.
fn parse_rule(rule: &str) -> Result<Vec<Alternative>, String> {
    let tokens = tokens(rule)?;
    let mut at = 0;
    let alternatives = or_expr(&tokens, &mut at, 0)?;
    if at != tokens.len() {
        return Err("unexpected text after the rule".into());
    }
    if alternatives.iter().any(|a| a.hosts.is_none()) {
        return Err("every alternative of the rule needs a Host".into());
    }
    Ok(alternatives)
}

/// Deeper nesting than this is refused (no stack overflow on hostile rules).
const MAX_DEPTH: usize = 16;
/// Most alternatives a rule may expand to.
const MAX_ALTERNATIVES: usize = MAX_ROUTES_PER_CONTAINER;

fn or_expr(t: &[Token], at: &mut usize, depth: usize) -> Result<Vec<Alternative>, String> {
    let mut alts = and_expr(t, at, depth)?;
    while t.get(*at) == Some(&Token::Or) {
        *at += 1;
        alts.extend(and_expr(t, at, depth)?);
        if alts.len() > MAX_ALTERNATIVES {
            return Err(format!("the rule expands to more than {MAX_ALTERNATIVES} routes"));
        }
    }
    Ok(alts)
}

fn and_expr(t: &[Token], at: &mut usize, depth: usize) -> Result<Vec<Alternative>, String> {
    let mut alts = atom(t, at, depth)?;
    while t.get(*at) == Some(&Token::And) {
        *at += 1;
        let right = atom(t, at, depth)?;
        let mut joined = Vec::new();
        for a in &alts {
            for b in &right {
                joined.push(Alternative {
                    hosts: both(&a.hosts, &b.hosts, "Host")?,
                    paths: both(&a.paths, &b.paths, "PathPrefix")?,
                });
                if joined.len() > MAX_ALTERNATIVES {
                    return Err(format!("the rule expands to more than {MAX_ALTERNATIVES} routes"));
                }
            }
        }
        alts = joined;
    }
    Ok(alts)
}

fn both(a: &Option<Vec<String>>, b: &Option<Vec<String>>, what: &str) -> Result<Option<Vec<String>>, String> {
    match (a, b) {
        (Some(_), Some(_)) => Err(format!(
            "two {what} matchers joined by && match nothing a route can hold"
        )),
        (Some(x), None) | (None, Some(x)) => Ok(Some(x.clone())),
        (None, None) => Ok(None),
    }
}

fn atom(t: &[Token], at: &mut usize, depth: usize) -> Result<Vec<Alternative>, String> {
    if depth >= MAX_DEPTH {
        return Err("the rule nests too deeply".into());
    }
    match t.get(*at) {
        Some(Token::Open) => {
            *at += 1;
            let inner = or_expr(t, at, depth + 1)?;
            expect(t, at, Token::Close)?;
            Ok(inner)
        }
        Some(Token::Word(name)) => {
            *at += 1;
            expect(t, at, Token::Open)?;
            let mut args = Vec::new();
            loop {
                match t.get(*at) {
                    Some(Token::Text(s)) => args.push(s.clone()),
                    _ => return Err(format!("{name}( takes quoted values")),
                }
                *at += 1;
                match t.get(*at) {
                    Some(Token::Comma) => *at += 1,
                    _ => break,
                }
            }
            expect(t, at, Token::Close)?;
            match name.as_str() {
                "Host" => Ok(vec![Alternative {
                    hosts: Some(args),
                    paths: None,
                }]),
                "PathPrefix" => Ok(vec![Alternative {
                    hosts: None,
                    paths: Some(args),
                }]),
                other => Err(format!(
                    "the {other} matcher is not supported (only Host and PathPrefix)"
                )),
            }
        }
        _ => Err("a matcher or ( expected".into()),
    }
}

fn expect(t: &[Token], at: &mut usize, want: Token) -> Result<(), String> {
    if t.get(*at) == Some(&want) {
        *at += 1;
        Ok(())
    } else {
        Err(format!("{want:?} expected"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn hosts_paths(routes: &[LabelRoute]) -> Vec<(String, String, u16)> {
        routes
            .iter()
            .map(|r| (r.host.clone(), r.path.clone(), r.port))
            .collect()
    }

    #[test]
    fn routehub_labels_with_defaults() {
        let (r, p) = routes_of(&labels(&[("routehub.host", "App.Example.com")]), &[8080, 443]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(hosts_paths(&r), [("app.example.com".into(), "/".into(), 443)]);
        let (r, p) = routes_of(
            &labels(&[
                ("routehub.host", "a.test, b.test"),
                ("routehub.path", "/api"),
                ("routehub.port", "3000"),
                ("routehub.policy", r#"{"auth":"jwt"}"#),
            ]),
            &[],
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            hosts_paths(&r),
            [
                ("a.test".into(), "/api".into(), 3000),
                ("b.test".into(), "/api".into(), 3000)
            ]
        );
        assert_eq!(r[0].policy.as_deref(), Some(r#"{"auth":"jwt"}"#));
    }

    #[test]
    fn traefik_labels() {
        let (r, p) = routes_of(
            &labels(&[
                ("traefik.enable", "true"),
                (
                    "traefik.http.routers.web.rule",
                    "Host(`a.test`) && PathPrefix(`/api`, `/v2`)",
                ),
                ("traefik.http.routers.web.service", "websvc"),
                ("traefik.http.services.websvc.loadbalancer.server.port", "8080"),
                (
                    "traefik.http.routers.other.rule",
                    "(Host(`b.test`) || Host(\"c.test\"))",
                ),
            ]),
            &[9000],
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            hosts_paths(&r),
            [
                ("b.test".into(), "/".into(), 8080),
                ("c.test".into(), "/".into(), 8080),
                ("a.test".into(), "/api".into(), 8080),
                ("a.test".into(), "/v2".into(), 8080),
            ]
        );
        let (r, _) = routes_of(
            &labels(&[
                ("traefik.enable", "false"),
                ("traefik.http.routers.w.rule", "Host(`a.test`)"),
            ]),
            &[80],
        );
        assert!(r.is_empty());
    }

    #[test]
    fn what_a_route_cannot_hold_is_refused_by_name() {
        for (rule, needle) in [
            ("Host(`a.test`) && Path(`/x`)", "Path matcher"),
            ("HostRegexp(`.*`)", "HostRegexp"),
            ("PathPrefix(`/x`)", "needs a Host"),
            ("!Host(`a.test`)", "not supported"),
            ("Host(`a.test`) && Host(`b.test`)", "two Host"),
            ("Host(`a.test`", "expected"),
            ("Host(`a.test) ", "unclosed"),
            ("Host(`a.test`) & Host(`b`)", "lone"),
            ("Host(abc)", "quoted"),
            ("Host(`a.test`) ; x", "not supported"),
        ] {
            let (r, p) = routes_of(&labels(&[("traefik.http.routers.x.rule", rule)]), &[80]);
            assert!(r.is_empty(), "{rule}: {r:?}");
            assert!(p.len() == 1 && p[0].contains(needle), "{rule}: {p:?}");
        }
        let (r, p) = routes_of(&labels(&[("routehub.host", "a.test"), ("routehub.port", "0")]), &[80]);
        assert!(r.is_empty() && p[0].contains("port"), "{p:?}");
        let (r, p) = routes_of(&labels(&[("routehub.host", "a.test")]), &[]);
        assert!(r.is_empty() && p[0].contains("no port label"), "{p:?}");
        let long = "a".repeat(MAX_LABEL_VALUE + 1);
        let (r, p) = routes_of(&labels(&[("routehub.host", &long)]), &[80]);
        assert!(r.is_empty() && p[0].contains("limit"), "{p:?}");
    }

    #[test]
    fn hostile_rules_are_bounded() {
        let deep = format!("{}Host(`a.test`){}", "(".repeat(10_000), ")".repeat(10_000));
        let (r, p) = routes_of(
            &labels(&[("traefik.http.routers.x.rule", &deep[..MAX_LABEL_VALUE])]),
            &[80],
        );
        assert!(r.is_empty() && p[0].contains("deeply"), "{p:?}");
        let wide = vec!["Host(`a.test`)"; 100].join(" || ");
        let (r, p) = routes_of(&labels(&[("traefik.http.routers.x.rule", &wide)]), &[80]);
        assert!(r.is_empty() && p[0].contains("more than"), "{p:?}");
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("traefik.http.routers.r{i}.rule"), format!("Host(`h{i}.test`)")))
            .collect();
        let many: BTreeMap<String, String> = many.into_iter().collect();
        let (r, p) = routes_of(&many, &[80]);
        assert_eq!(r.len(), MAX_ROUTES_PER_CONTAINER);
        assert_eq!(p.len(), 1);
    }

    proptest! {
        #[test]
        fn any_labels_give_an_answer_never_a_panic(
            rule in "[()`\"&|!, a-zA-Z./]{0,64}",
            port in "[0-9a-z]{0,6}",
        ) {
            let l = labels(&[
                ("traefik.http.routers.x.rule", &rule),
                ("traefik.http.services.s.loadbalancer.server.port", &port),
                ("routehub.host", &rule),
                ("routehub.port", &port),
            ]);
            let (routes, _) = routes_of(&l, &[80]);
            prop_assert!(routes.len() <= MAX_ROUTES_PER_CONTAINER);
        }
    }
}
