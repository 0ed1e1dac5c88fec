//! Access control end to end: orgs, hosts and keys managed through the
//! gateway's admin API; routes declared by the relay with JWT, mTLS and
//! ip-allow policies; identity headers at the backend.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::access::jws::{Claims, mint};
use gateway::access::keys::{KeyKind, UserSigningKey};
use harness::client::{Proto, Reply, empty};
use harness::{Backend, TestNet, wait_until};
use http::Method;
use relay::{Relay, RouteConfig};
use serde_json::{Value, json};
use tunnel_proto::RelayKey;

const WITHIN: Duration = Duration::from_secs(10);
const APP: &str = "app.acme.test";
const ADMIN_ONLY: &str = "admin.acme.test";
const INTERNAL: &str = "internal.acme.test";
const OPEN: &str = "open.acme.test";
const BETA: &str = "b.beta.test";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn route(host: &str, target: &str, policy: Value) -> RouteConfig {
    let mut r: RouteConfig = format!("{host}={target}").parse().unwrap();
    r.policy = policy;
    r
}

struct World {
    net: TestNet,
    backend: Backend,
    relay: Relay,
    relay_key: String,
    alice: UserSigningKey,
    bob: UserSigningKey,
}

/// Orgs `acme` and `beta`; alice (acme, viewer on acme/web) and bob (beta);
/// one relay of acme serving routes with each policy.
async fn world() -> World {
    let backend = Backend::start().await;
    let net = TestNet::builder().start().await.unwrap();
    let key_path = net.key_path("acme-relay");
    let relay_key = RelayKey::load(&key_path).unwrap().public_key().to_string();
    let alice = UserSigningKey::generate(KeyKind::Ed25519).unwrap();
    let bob = UserSigningKey::generate(KeyKind::P256).unwrap();
    for org in ["acme", "beta"] {
        net.admin_ok(Method::POST, "/v1/orgs", json!({ "name": org }))
            .await
            .unwrap();
    }
    net.admin_ok(
        Method::POST,
        "/v1/hosts",
        json!({"pattern": "*.acme.test", "org": "acme"}),
    )
    .await
    .unwrap();
    net.admin_ok(Method::POST, "/v1/hosts", json!({"pattern": BETA, "org": "beta"}))
        .await
        .unwrap();
    net.admin_ok(Method::POST, "/v1/relay-keys", json!({"key": relay_key, "org": "acme"}))
        .await
        .unwrap();
    net.admin_ok(
        Method::POST,
        "/v1/roles",
        json!({"org": "acme", "name": "viewer", "permissions": ["read"]}),
    )
    .await
    .unwrap();
    net.admin_ok(
        Method::POST,
        "/v1/users",
        json!({"name": "alice", "orgs": ["acme"], "keys": [alice.public_key().to_jwk("x").to_string()], "roles": ["acme/web=viewer"]}),
    )
    .await
    .unwrap();
    net.admin_ok(
        Method::POST,
        "/v1/users",
        json!({"name": "bob", "orgs": ["beta"], "keys": [bob.public_key().to_pem()]}),
    )
    .await
    .unwrap();
    let url = backend.url();
    let routes = vec![
        route(
            APP,
            &url,
            json!({"auth": "jwt", "project": "acme/web", "role": "viewer"}),
        ),
        route(
            ADMIN_ONLY,
            &url,
            json!({"auth": "jwt", "project": "acme/web", "role": "admin"}),
        ),
        route(INTERNAL, &url, json!({"ip_allow": ["10.0.0.0/8"]})),
        route(OPEN, &url, Value::Null),
    ];
    let relay = Relay::start(net.relay_config("acme-relay", routes)).await.unwrap();
    relay.wait_ready(1, WITHIN).await.expect("relay connects");
    World {
        net,
        backend,
        relay,
        relay_key,
        alice,
        bob,
    }
}

fn token(key: &UserSigningKey, aud: &str, exp: u64, nbf: Option<u64>) -> String {
    let claims = Claims {
        sub: None,
        aud: aud.into(),
        exp,
        nbf,
        iat: Some(now()),
    };
    mint(key, &key.public_key().thumbprint(), &claims).unwrap()
}

async fn get_with(net: &TestNet, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    net.client()
        .request(host, Proto::H1, req.body(empty()).unwrap())
        .await
        .unwrap()
}

async fn bearer(net: &TestNet, host: &str, token: &str) -> Reply {
    get_with(net, host, "/headers", &[("authorization", &format!("Bearer {token}"))]).await
}

/// A refused request reached nothing behind the gateway: the backend saw
/// no new request.
fn assert_nothing_forwarded(w: &World, before: u64, what: &str) {
    assert_eq!(
        w.backend.hits(),
        before,
        "{what}: the refused request reached the backend"
    );
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test]
async fn jwt_policy_admits_valid_tokens_and_refuses_every_bad_one() {
    let w = world().await;
    let good = token(&w.alice, APP, now() + 3600, None);
    let ok = bearer(&w.net, APP, &good).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = ok.text();
    assert!(seen.contains("x-routehub-user: alice\n"), "{seen}");
    assert!(seen.contains("x-routehub-roles: viewer\n"), "{seen}");
    assert!(
        !seen.contains("x-routehub-attestation"),
        "the relay strips the tag: {seen}"
    );
    // The backend gets the identity, never the token itself.
    assert!(!seen.contains("authorization"), "{seen}");
    assert!(!seen.contains(&good), "{seen}");

    // The same token from a cookie; the app's own cookies go through.
    let cookie = format!("theme=dark; routehub_token={good}; lang=en");
    let r = get_with(&w.net, APP, "/headers", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("cookie: theme=dark; lang=en\n"), "{}", r.text());
    assert!(!r.text().contains("routehub_token"), "{}", r.text());
    let before = w.backend.hits();

    let kid = w.alice.public_key().thumbprint();
    let claims = json!({"aud": APP, "exp": now() + 3600}).to_string();
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": kid}).to_string().as_bytes()),
        b64(claims.as_bytes())
    );
    // HS256 keyed with the public key: the classic algorithm confusion.
    let hs_input = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "kid": kid}).to_string().as_bytes()),
        b64(claims.as_bytes())
    );
    let pem = w.alice.public_key().to_pem();
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes()),
        hs_input.as_bytes(),
    );
    let hs256 = format!("{hs_input}.{}", b64(mac.as_ref()));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(json!({"aud": APP, "exp": now() + 3600, "sub": "root"})
        .to_string()
        .as_bytes());
    let tampered = parts.join(".");
    let stranger = UserSigningKey::generate(KeyKind::Ed25519).unwrap();
    let cases = [
        ("expired", token(&w.alice, APP, now() - 120, None)),
        // Whoever minted it: the gateway caps a token's lifetime.
        ("good for a year", token(&w.alice, APP, now() + 365 * 86_400, None)),
        ("not yet valid", token(&w.alice, APP, now() + 3600, Some(now() + 600))),
        ("wrong aud", token(&w.alice, OPEN, now() + 3600, None)),
        ("unknown kid", token(&stranger, APP, now() + 3600, None)),
        ("alg none", none),
        ("HS256 with the public key", hs256),
        ("tampered payload", tampered),
        ("garbage", "a.b.c".into()),
    ];
    for (what, t) in cases {
        let r = bearer(&w.net, APP, &t).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let challenge = r
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{what}");
        assert_nothing_forwarded(&w, before, what);
    }
    let missing = get_with(&w.net, APP, "/", &[]).await;
    assert_eq!(missing.status, 401);
    assert_nothing_forwarded(&w, before, "no token");
    let oversized = format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c");
    assert_eq!(bearer(&w.net, APP, &oversized).await.status, 401);
    assert_nothing_forwarded(&w, before, "oversized token");
    assert!(
        w.net
            .metric("routehub_auth_decisions_total{policy=\"jwt\",outcome=\"allowed\"}")
            .await
            .is_some_and(|v| v >= 2.0)
    );
    assert!(
        w.net
            .metric("routehub_auth_decisions_total{policy=\"jwt\",outcome=\"unauthorized\"}")
            .await
            .is_some_and(|v| v >= 9.0)
    );
}

#[tokio::test]
async fn orgs_and_roles_bound_who_gets_in() {
    let w = world().await;
    let before = w.backend.hits();
    // bob (org beta), with a token for this very host: not a member.
    let r = bearer(&w.net, APP, &token(&w.bob, APP, now() + 3600, None)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not in org acme"), "{}", r.text());
    assert_nothing_forwarded(&w, before, "other org");
    // alice lacks role admin.
    let r = bearer(&w.net, ADMIN_ONLY, &token(&w.alice, ADMIN_ONLY, now() + 3600, None)).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("role admin"), "{}", r.text());
    assert_nothing_forwarded(&w, before, "missing role");
    // Granting it through the admin API takes effect at once.
    w.net
        .admin_ok(
            Method::POST,
            "/v1/users",
            json!({"name": "alice", "roles": ["acme/web=admin"]}),
        )
        .await
        .unwrap();
    let r = bearer(&w.net, ADMIN_ONLY, &token(&w.alice, ADMIN_ONLY, now() + 3600, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("x-routehub-roles: admin,viewer\n"), "{}", r.text());
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_backend() {
    let w = world().await;
    let forged = [
        ("x-routehub-user", "root"),
        ("x-routehub-roles", "admin"),
        ("x-routehub-attestation", "v1.AAAA"),
    ];
    let r = get_with(&w.net, OPEN, "/headers", &forged).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("x-routehub-user"), "{}", r.text());
    assert!(!r.text().contains("x-routehub-roles"), "{}", r.text());
    let good = format!("Bearer {}", token(&w.alice, APP, now() + 3600, None));
    let mut headers = forged.to_vec();
    headers.push(("authorization", &good));
    let r = get_with(&w.net, APP, "/headers", &headers).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("x-routehub-user: alice\n"), "{}", r.text());
    assert!(!r.text().contains("root"), "{}", r.text());
}

#[tokio::test]
async fn ip_allow_refuses_addresses_outside_the_list() {
    let w = world().await;
    let before = w.backend.hits();
    let r = get_with(&w.net, INTERNAL, "/", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["x-routehub-error"], "forbidden");
    assert_nothing_forwarded(&w, before, "outside the ip-allow list");
    assert_eq!(get_with(&w.net, OPEN, "/", &[]).await.status, 200);
}

#[tokio::test]
async fn removed_keys_take_effect_without_a_restart() {
    let w = world().await;
    let t = token(&w.alice, APP, now() + 3600, None);
    assert_eq!(bearer(&w.net, APP, &t).await.status, 200);
    let kid = w.alice.public_key().thumbprint();
    w.net
        .admin_api(Method::DELETE, &format!("/v1/users/alice/keys/{kid}"), None, true)
        .await
        .unwrap();
    let before = w.backend.hits();
    let r = bearer(&w.net, APP, &t).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_nothing_forwarded(&w, before, "removed key");
    // The removal is on disk: a restarted gateway agrees.
    let stored = std::fs::read_to_string(w.net.gateway.data_dir().join("identity.json")).unwrap();
    assert!(!stored.contains(&kid));

    // A removed relay key: its session is closed at once.
    assert_eq!(w.net.gateway.session_count(), 1);
    let (status, _) = w
        .net
        .admin_api(Method::DELETE, &format!("/v1/relay-keys/{}", w.relay_key), None, true)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let gone = wait_until(WITHIN, || {
        let n = w.net.gateway.session_count();
        async move { (n == 0).then_some(()) }
    })
    .await;
    assert!(gone.is_some(), "session of a removed relay key still open");
    let err = TestNet::relay_error(&w.relay, WITHIN).await.unwrap_or_default();
    assert!(!err.is_empty());
}

#[tokio::test]
async fn admin_api_needs_its_token() {
    let w = world().await;
    let (status, _) = w.net.admin_api(Method::GET, "/v1/users", None, false).await.unwrap();
    assert_eq!(status, 401);
    let (status, _) = w
        .net
        .admin_api(Method::POST, "/v1/orgs", Some(json!({"name": "evil"})), false)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, v) = w.net.admin_api(Method::GET, "/v1/users", None, true).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    // Bad input is a 400 with a reason, not a crash.
    let (status, v) = w
        .net
        .admin_api(
            Method::POST,
            "/v1/hosts",
            Some(json!({"pattern": "x.test", "org": "ghost"})),
            true,
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(w.net.admin_get("/healthz").await.unwrap(), "ok\n");
}

/// A kept-alive connection to `addr` that got a 200 for `GET path` with
/// `authorization` (so it holds one of the admin listener's permits).
async fn admin_conn(
    addr: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Option<hyper::client::conn::http1::SendRequest<harness::client::ReqBody>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "admin");
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let resp = send.send_request(req.body(empty()).ok()?).await.ok()?;
    (resp.status() == 200).then_some(send)
}

#[tokio::test]
async fn the_gateway_admin_api_takes_the_bearer_scheme_in_any_case() {
    let net = TestNet::builder().start().await.unwrap();
    let token = ops::AdminToken::read(&net.gateway.data_dir().join(ops::TOKEN_FILE)).unwrap();
    let addr = net.gateway.admin_addr();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let value = format!("{scheme} {}", token.secret());
        assert!(
            admin_conn(addr, "/v1/orgs", Some(&value)).await.is_some(),
            "RFC 9110: the scheme {scheme:?} is case-insensitive"
        );
    }
    assert!(
        admin_conn(addr, "/v1/orgs", Some(&format!("Basic {}", token.secret())))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_gateway_admin_listener_closes_connections_past_its_cap() {
    let net = TestNet::builder().start().await.unwrap();
    let addr = net.gateway.admin_addr();
    let mut held = Vec::new();
    for n in 0..ops::MAX_ADMIN_CONNECTIONS {
        held.push(
            admin_conn(addr, "/healthz", None)
                .await
                .unwrap_or_else(|| panic!("connection {n}")),
        );
    }
    // One more is closed without an answer.
    let over = tokio::time::timeout(Duration::from_secs(5), admin_conn(addr, "/healthz", None))
        .await
        .expect("closed at once, not left hanging");
    assert!(
        over.is_none(),
        "connection {} was served",
        ops::MAX_ADMIN_CONNECTIONS + 1
    );
    // Once one ends, a new connection is served again.
    held.pop();
    let served = wait_until(WITHIN, || async move {
        admin_conn(addr, "/healthz", None).await.map(|_| ())
    })
    .await;
    assert!(served.is_some(), "the permit came back");
}

#[tokio::test]
async fn the_gateway_admin_listener_stays_on_loopback_unless_forced() {
    harness::init();
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway::GatewayConfig {
        data_dir: dir.path().join("gw"),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "0.0.0.0:0".parse().unwrap(),
        http_listen: gateway::config::HttpListen::Off,
        ..Default::default()
    };
    let err = gateway::Gateway::start(config.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("0.0.0.0:0 is not a loopback address") && err.contains("dangerous_admin_public"),
        "{err}"
    );
    config.dangerous_admin_public = true;
    let gw = gateway::Gateway::start(config).await.expect("allowed when forced");
    assert!(gw.admin_addr().ip().is_unspecified());
    gw.shutdown();
    gw.wait().await;
}

/// A CA (PEM) and a client certificate it issued for `cn` (chain, key).
fn client_ca(
    cn: &str,
) -> (
    String,
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, format!("{cn} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    (ca_cert.pem(), vec![leaf_cert.der().clone()], key)
}

#[tokio::test]
async fn mtls_hosts_need_a_certificate_from_their_orgs_ca() {
    let w = world().await;
    let (ca_pem, chain, key) = client_ca("robot-1");
    let (_, other_chain, other_key) = client_ca("intruder");
    w.net
        .admin_ok(Method::POST, "/v1/orgs", json!({"name": "acme", "client_ca": ca_pem}))
        .await
        .unwrap();
    let backend = Backend::start().await;
    let relay = Relay::start(w.net.relay_config(
        "acme-relay",
        vec![route("m.acme.test", &backend.url(), json!({"auth": "mtls"}))],
    ))
    .await
    .unwrap();
    relay.wait_ready(1, WITHIN).await.expect("relay connects");
    let get = |client: harness::TestClient, host: &'static str| async move {
        let req = http::Request::get("/headers")
            .header("host", host)
            .body(empty())
            .unwrap();
        client.request(host, Proto::H1, req).await
    };
    let none = get(w.net.client(), "m.acme.test").await.unwrap();
    assert_eq!(none.status, 403, "{}", none.text());
    assert!(none.text().contains("client certificate is required"));
    assert_eq!(backend.hits(), 0, "nothing forwarded without a certificate");
    // Another CA's certificate: the handshake takes any certificate whose
    // key the client holds (which CA must have issued it depends on the
    // host's org, known only from the request), so the request is refused.
    let other = get(w.net.client().with_client_cert(other_chain, other_key), "m.acme.test")
        .await
        .unwrap();
    assert_eq!(other.status, 403, "{}", other.text());
    assert!(other.text().contains("client certificate refused"), "{}", other.text());
    assert_eq!(backend.hits(), 0, "nothing forwarded with another CA's certificate");

    // Only hosts with mTLS routes ask for a certificate: a client holding
    // one is not asked on the open host, and is asked on the mTLS host.
    let client = w.net.client().with_client_cert(chain, key);
    let open = get(client.clone(), OPEN).await.unwrap();
    assert_eq!(open.status, 200, "{}", open.text());
    assert_eq!(client.client_cert_requests(), 0, "asked on a host without mTLS routes");
    let ok = get(client.clone(), "m.acme.test").await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().contains("x-routehub-user: robot-1\n"), "{}", ok.text());
    assert_eq!(client.client_cert_requests(), 1, "asked on the mTLS host");
    assert!(
        w.net
            .metric("routehub_auth_decisions_total{policy=\"mtls\",outcome=\"allowed\"}")
            .await
            .is_some_and(|v| v >= 1.0)
    );
}

#[tokio::test]
async fn concurrent_admin_changes_are_all_kept() {
    let w = world().await;
    // Twenty users added at once: every read-modify-write is serialized,
    // so none overwrites another, in memory or on disk.
    let adds: Vec<_> = (0..20)
        .map(|i| {
            let key = UserSigningKey::generate(KeyKind::Ed25519).unwrap();
            let body = json!({"name": format!("user-{i}"), "orgs": ["acme"], "keys": [key.public_key().to_pem()]});
            let net = &w.net;
            async move { net.admin_ok(Method::POST, "/v1/users", body).await }
        })
        .collect();
    for result in futures_util::future::join_all(adds).await {
        result.unwrap();
    }
    let (status, users) = w.net.admin_api(Method::GET, "/v1/users", None, true).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(users.as_array().map(Vec::len), Some(22), "alice, bob and 20 more");
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(w.net.gateway.data_dir().join("identity.json")).unwrap())
            .unwrap();
    assert_eq!(stored["users"].as_object().map(|u| u.len()), Some(22));
}
