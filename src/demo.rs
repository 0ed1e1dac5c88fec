//! `routehub demo`: a gateway with a dev CA, a relay with its own key and a
//! small demo service, wired together in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tunnel_proto::RelayKey;

pub const DEMO_HOST: &str = "demo.localhost";

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub relay_admin_listen: SocketAddr,
    pub data_dir: PathBuf,
}

/// Starts everything, prints the curl line, runs until `stop` resolves.
pub async fn run(opts: DemoOptions, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    ops::fs::ensure_private_dir(&opts.data_dir)?;
    let key_path = opts.data_dir.join("relay.key");
    if !key_path.exists() {
        RelayKey::generate()?.save_new(&key_path)?;
    }
    let key = RelayKey::load(&key_path)?;
    let keys_path = opts.data_dir.join("authorized_keys");
    // Any *.localhost name, so `routehub routes add --host app.localhost …` works.
    let keys_file = format!(
        "# written by `routehub demo`\n{} {DEMO_HOST},*.localhost\n",
        key.public_key()
    );
    ops::fs::write_atomic(&keys_path, keys_file.as_bytes(), ops::fs::Access::Public)?;

    let backend = serve_demo_service().await?;
    let gateway = gateway::Gateway::start(gateway::GatewayConfig {
        data_dir: opts.data_dir.join("gateway"),
        listen: opts.listen,
        admin_listen: opts.admin_listen,
        authorized_keys: Some(keys_path),
        names: vec!["localhost".into()],
        // Dev certificates only: no port 80 needed.
        http_listen: gateway::config::HttpListen::Off,
        ..Default::default()
    })
    .await
    .context("starting the gateway (use --listen / --admin-listen to pick other ports)")?;
    let ca = gateway
        .ca_cert_path()
        .context("the demo gateway signs with the dev CA")?
        .to_owned();
    let relay = relay::Relay::start(relay::RelayConfig {
        gateways: vec![gateway.addr().to_string()],
        key: key_path,
        ca: Some(ca.clone()),
        server_name: Some("localhost".into()),
        data_dir: opts.data_dir.join("relay"),
        admin_listen: Some(opts.relay_admin_listen),

        ..Default::default()
    })
    .await?;
    point_demo_route(relay.store(), &format!("http://{backend}")).await?;
    let status = match relay.wait_ready(1, Duration::from_secs(10)).await {
        Ok(status) => status,
        Err(status) => anyhow::bail!("the relay did not connect to the gateway within 10 s (status: {status:?})"),
    };
    let transport = status
        .values()
        .find_map(|g| g.session.as_ref())
        .map(|s| s.transport.as_str())
        .unwrap_or("?");
    let port = gateway.addr().port();
    let ip = gateway.addr().ip();
    println!();
    println!(
        "Routehub demo is up: gateway on {} (HTTPS + QUIC), relay connected over {transport}.",
        gateway.addr()
    );
    println!("From another terminal:");
    println!();
    println!(
        "  curl --cacert {} --resolve {DEMO_HOST}:{port}:{ip} https://{DEMO_HOST}:{port}/",
        ca.display()
    );
    println!();
    println!("Metrics: curl http://{}/metrics    Stop: Ctrl-C", gateway.admin_addr());

    stop.await;
    println!("stopping...");
    relay.shutdown();
    gateway.shutdown();
    relay.wait().await;
    gateway.wait().await;
    Ok(())
}

/// Adds the demo route, or points it at this run's demo service (its port
/// changes from run to run; the store keeps everything else).
async fn point_demo_route(store: &relay::store::Store, target: &str) -> Result<()> {
    let existing = store
        .list()
        .await?
        .into_iter()
        .find(|r| r.host == DEMO_HOST && r.path == "/");
    match existing {
        Some(r) if r.target == target && r.enabled => {}
        Some(r) => {
            let patch = relay::model::RoutePatch {
                target: Some(target.into()),
                enabled: Some(true),
                ..Default::default()
            };
            store.update(r.id, patch, "demo").await?;
        }
        None => {
            let route = relay::RouteConfig {
                host: DEMO_HOST.into(),
                path: "/".into(),
                target: target.into(),
                priority: 0,
                policy: serde_json::Value::Null,
            };
            store.add(route.to_new_route(), "demo").await?;
        }
    }
    Ok(())
}

/// The demo service: echoes the request it got and which transport carried it.
async fn serve_demo_service() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, std::convert::Infallible>(demo_page(&req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn demo_page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let transport = req
        .headers()
        .get("x-routehub-transport")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none (direct)");
    let mut text = format!(
        "Hello from the Routehub demo service!\n\nThis request reached a service on this machine through the {transport} tunnel.\n\n{} {} {:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (name, value) in req.headers() {
        text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let (body, content_type) = if wants_html {
        let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        (
            format!("<!doctype html><title>Routehub demo</title><pre>{escaped}</pre>\n"),
            "text/html; charset=utf-8",
        )
    } else {
        (text, "text/plain; charset=utf-8")
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
