//! The access decision for one request: the route's policy, bounded by
//! what the host's org allows, against the request's address, token or
//! client certificate. Pure: no I/O, the clock is passed in.

use std::collections::BTreeSet;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use rustls_pki_types::CertificateDer;
use tunnel_proto::routes::parse_project;
use tunnel_proto::{AuthMode, Cidr, RoutePolicy};

use super::authority::Authority;
use super::jws::{self, JwsError};
use super::mtls;

/// Cookie that may carry the token (for browsers).
pub const TOKEN_COOKIE: &str = "routehub_token";

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// Normalised hostname of the request.
    pub host: &'a str,
    pub peer: IpAddr,
    pub headers: &'a HeaderMap,
    /// The TLS client's chain, leaf first (mTLS hosts only).
    pub client_chain: Option<&'a [CertificateDer<'static>]>,
    /// Unix seconds.
    pub now: u64,
}

/// Who the request is from, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Roles on the route's project (and org-wide ones), sorted.
    pub roles: Vec<String>,
}

/// Why a request is refused: 401 (with a challenge) or 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Unauthorized { reason: String, challenge: String },
    Forbidden(String),
}

impl Denial {
    pub fn outcome(&self) -> &'static str {
        match self {
            Denial::Unauthorized { .. } => "unauthorized",
            Denial::Forbidden(_) => "forbidden",
        }
    }
}

fn forbidden(reason: impl Into<String>) -> Denial {
    Denial::Forbidden(reason.into())
}

/// The route's auth mode.
pub fn mode(policy: Option<&RoutePolicy>) -> AuthMode {
    policy.map(|p| p.auth).unwrap_or_default()
}

/// Decides one request. `Ok(Some(identity))` for an authenticated user,
/// `Ok(None)` for a public route.
pub fn decide(
    policy: Option<&RoutePolicy>,
    req: &AccessRequest<'_>,
    auth: &Authority,
) -> Result<Option<Identity>, Denial> {
    let mode = mode(policy);
    let org = auth.org_of_host(req.host);
    if let Some((name, o)) = org
        && !o.allowed_policies.contains(&mode)
    {
        return Err(forbidden(format!("org {name} does not allow {} routes", mode.as_str())));
    }
    let Some(policy) = policy else {
        return Ok(None);
    };
    if !policy.ip_allow.is_empty() {
        let allowed = policy
            .ip_allow
            .iter()
            .filter_map(|c| c.parse::<Cidr>().ok())
            .any(|c| c.contains(req.peer));
        if !allowed {
            return Err(forbidden("your address is not allowed"));
        }
    }
    if let Some(project) = &policy.project {
        let project_org = parse_project(project).map(|(o, _)| o).unwrap_or_default();
        if org.map(|(n, _)| n) != Some(project_org) {
            return Err(forbidden("the route's project is outside the host's org"));
        }
    }
    match mode {
        AuthMode::Public => Ok(None),
        AuthMode::Jwt => jwt(policy, req, auth).map(Some),
        AuthMode::Mtls => client_cert(req, auth).map(Some),
    }
}

/// The token from `Authorization: Bearer` or the token cookie.
fn token(headers: &HeaderMap) -> Result<Option<&str>, JwsError> {
    let mut auths = headers.get_all(AUTHORIZATION).iter();
    if let Some(v) = auths.next() {
        if auths.next().is_some() {
            return Err(JwsError::Malformed("more than one Authorization header"));
        }
        let v = v
            .to_str()
            .map_err(|_| JwsError::Malformed("Authorization is not ASCII"))?;
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(JwsError::Malformed("Authorization is not Bearer"));
        }
        return Ok(Some(rest.trim()));
    }
    for v in headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == TOKEN_COOKIE
            {
                return Ok(Some(value.trim_matches('"')));
            }
        }
    }
    Ok(None)
}

/// Removes the token from an allowed request before it is forwarded: the
/// `Authorization` header and the token cookie (other cookies stay). The
/// backend learns who it is from `X-Routehub-User`/`-Roles`; the token
/// itself would let a backend (or its logs) replay it for its lifetime.
pub fn strip_token(headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
    let cookies: Vec<http::HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    if cookies.is_empty() {
        return;
    }
    headers.remove(COOKIE);
    for v in cookies {
        let Ok(text) = v.to_str() else {
            headers.append(COOKIE, v);
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(name, _)| name != TOKEN_COOKIE))
            .collect();
        if !kept.is_empty()
            && let Ok(v) = http::HeaderValue::from_str(&kept.join("; "))
        {
            headers.append(COOKIE, v);
        }
    }
}

fn jwt(policy: &RoutePolicy, req: &AccessRequest<'_>, auth: &Authority) -> Result<Identity, Denial> {
    let Some((org_name, org)) = auth.org_of_host(req.host) else {
        return Err(forbidden("this host belongs to no org"));
    };
    let realm = req.host;
    let invalid = |e: JwsError| Denial::Unauthorized {
        reason: e.to_string(),
        challenge: format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
    };
    let token = match token(req.headers).map_err(invalid)? {
        Some(t) if !t.is_empty() => t,
        _ => {
            return Err(Denial::Unauthorized {
                reason: "a bearer token is required".into(),
                challenge: format!("Bearer realm=\"{realm}\""),
            });
        }
    };
    let unverified = jws::parse(token).map_err(invalid)?;
    let entry = auth
        .user_key(&unverified.header.kid)
        .ok_or(JwsError::UnknownKey)
        .map_err(invalid)?;
    let claims = unverified.verify(&entry.key).map_err(invalid)?;
    claims.check(req.host, req.now).map_err(invalid)?;
    if claims.sub.as_ref().is_some_and(|s| s != &entry.user) {
        return Err(invalid(JwsError::WrongSubject));
    }
    let user = auth.user(&entry.user).ok_or(JwsError::UnknownKey).map_err(invalid)?;
    if !user.orgs.contains(org_name) {
        return Err(forbidden(format!("user {} is not in org {org_name}", entry.user)));
    }
    let mut roles: BTreeSet<&String> = user.roles.get(org_name).into_iter().flatten().collect();
    if let Some(project) = &policy.project {
        roles.extend(user.roles.get(project).into_iter().flatten());
    }
    if let (Some(role), Some(project)) = (&policy.role, &policy.project)
        && !roles.contains(role)
    {
        return Err(forbidden(format!("role {role} on {project} is required")));
    }
    if let (Some(perm), Some(project)) = (&policy.permission, &policy.project) {
        let granted = roles
            .iter()
            .any(|r| org.roles.get(*r).is_some_and(|perms| perms.contains(perm)));
        if !granted {
            return Err(forbidden(format!("permission {perm} on {project} is required")));
        }
    }
    Ok(Identity {
        user: entry.user.clone(),
        roles: roles.into_iter().cloned().collect(),
    })
}

fn client_cert(req: &AccessRequest<'_>, auth: &Authority) -> Result<Identity, Denial> {
    let Some((org_name, _)) = auth.org_of_host(req.host) else {
        return Err(forbidden("this host belongs to no org"));
    };
    let verifier = auth
        .client_verifier(org_name)
        .ok_or_else(|| forbidden(format!("org {org_name} has no client CA")))?;
    let chain = match req.client_chain {
        Some(c) if !c.is_empty() => c,
        _ => return Err(forbidden("a client certificate is required")),
    };
    mtls::verify_chain(verifier, chain).map_err(forbidden)?;
    Ok(Identity {
        user: mtls::common_name(&chain[0]).unwrap_or_else(|| "client-certificate".into()),
        roles: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::jws::{Claims, mint};
    use crate::access::keys::{KeyKind, UserSigningKey};
    use crate::access::model::{IdentityDoc, UserAdd};
    use crate::authorized_keys::AuthorizedKeys;

    struct World {
        auth: Authority,
        alice: UserSigningKey,
    }

    fn world() -> World {
        let alice = UserSigningKey::generate(KeyKind::P256).unwrap();
        let mut doc = IdentityDoc::default();
        doc.add_org("acme", None, None).unwrap();
        doc.add_org("other", None, None).unwrap();
        doc.add_host("app.test", "acme").unwrap();
        doc.add_host("b.test", "other").unwrap();
        doc.add_role("acme", "viewer", &["read".into()]).unwrap();
        doc.add_user(&UserAdd {
            name: "alice".into(),
            orgs: vec!["acme".into()],
            keys: vec![alice.public_key().to_pem()],
            roles: vec!["acme/web=viewer".into()],
        })
        .unwrap();
        World {
            auth: Authority::new(AuthorizedKeys::default(), doc),
            alice,
        }
    }

    fn bearer(key: &UserSigningKey, aud: &str) -> HeaderMap {
        let claims = Claims {
            sub: None,
            aud: aud.into(),
            exp: 2000,
            nbf: None,
            iat: None,
        };
        let t = mint(key, &key.public_key().thumbprint(), &claims).unwrap();
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        h
    }

    fn req<'a>(host: &'a str, headers: &'a HeaderMap) -> AccessRequest<'a> {
        AccessRequest {
            host,
            peer: "127.0.0.1".parse().unwrap(),
            headers,
            client_chain: None,
            now: 1000,
        }
    }

    fn jwt_policy(role: Option<&str>, permission: Option<&str>) -> RoutePolicy {
        RoutePolicy {
            auth: AuthMode::Jwt,
            project: Some("acme/web".into()),
            role: role.map(Into::into),
            permission: permission.map(Into::into),
            ip_allow: vec![],
            upgrades: None,
        }
    }

    #[test]
    fn roles_permissions_and_orgs() {
        let w = world();
        let h = bearer(&w.alice, "app.test");
        let id = decide(
            Some(&jwt_policy(Some("viewer"), Some("read"))),
            &req("app.test", &h),
            &w.auth,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (id.user.as_str(), id.roles.as_slice()),
            ("alice", &["viewer".to_owned()][..])
        );
        let denied = decide(Some(&jwt_policy(Some("admin"), None)), &req("app.test", &h), &w.auth);
        assert!(matches!(denied, Err(Denial::Forbidden(_))));
        let denied = decide(Some(&jwt_policy(None, Some("write"))), &req("app.test", &h), &w.auth);
        assert!(matches!(denied, Err(Denial::Forbidden(_))));
        // alice on another org's host: her token for that host, but not its member.
        let h = bearer(&w.alice, "b.test");
        let p = RoutePolicy {
            auth: AuthMode::Jwt,
            ..Default::default()
        };
        assert!(matches!(
            decide(Some(&p), &req("b.test", &h), &w.auth),
            Err(Denial::Forbidden(_))
        ));
        // No token, a Basic header, a cookie.
        let none = HeaderMap::new();
        assert!(matches!(
            decide(Some(&p), &req("app.test", &none), &w.auth),
            Err(Denial::Unauthorized { .. })
        ));
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, "Basic YTpi".parse().unwrap());
        assert!(matches!(
            decide(Some(&p), &req("app.test", &basic), &w.auth),
            Err(Denial::Unauthorized { .. })
        ));
        let t = bearer(&w.alice, "app.test")[AUTHORIZATION].to_str().unwrap()[7..].to_owned();
        let mut cookie = HeaderMap::new();
        cookie.insert(COOKIE, format!("a=b; {TOKEN_COOKIE}={t}").parse().unwrap());
        assert!(decide(Some(&p), &req("app.test", &cookie), &w.auth).is_ok());
    }

    #[test]
    fn the_token_is_stripped_and_other_cookies_kept() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        h.append(
            COOKIE,
            format!("theme=dark; {TOKEN_COOKIE}=a.b.c; lang=en").parse().unwrap(),
        );
        h.append(COOKIE, format!("{TOKEN_COOKIE}=x.y.z").parse().unwrap());
        h.append(COOKIE, "routehub_token_other=1".parse().unwrap());
        strip_token(&mut h);
        assert!(h.get(AUTHORIZATION).is_none());
        let cookies: Vec<&str> = h.get_all(COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(cookies, ["theme=dark; lang=en", "routehub_token_other=1"]);
        let mut only = HeaderMap::new();
        only.insert(COOKIE, format!("{TOKEN_COOKIE}=a.b.c").parse().unwrap());
        strip_token(&mut only);
        assert!(only.get(COOKIE).is_none(), "no empty cookie header left");
    }

    #[test]
    fn ip_allow_and_org_bounds() {
        let mut w = world();
        let none = HeaderMap::new();
        let p = RoutePolicy {
            ip_allow: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        assert!(matches!(
            decide(Some(&p), &req("app.test", &none), &w.auth),
            Err(Denial::Forbidden(_))
        ));
        let mut r = req("app.test", &none);
        r.peer = "10.1.1.1".parse().unwrap();
        assert_eq!(decide(Some(&p), &r, &w.auth), Ok(None));
        // An org that forbids public routes.
        let mut doc = w.auth.doc().clone();
        doc.add_org("acme", None, Some([AuthMode::Jwt].into())).unwrap();
        w.auth = Authority::new(AuthorizedKeys::default(), doc);
        assert!(matches!(
            decide(None, &req("app.test", &none), &w.auth),
            Err(Denial::Forbidden(_))
        ));
        // A project of another org.
        let p = RoutePolicy {
            auth: AuthMode::Jwt,
            project: Some("other/x".into()),
            ..Default::default()
        };
        let h = bearer(&w.alice, "app.test");
        assert!(matches!(
            decide(Some(&p), &req("app.test", &h), &w.auth),
            Err(Denial::Forbidden(_))
        ));
    }
}
