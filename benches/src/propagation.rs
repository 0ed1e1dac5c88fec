//! Route propagation: a change through the relay's admin API until the
//! gateway routes the first request by the new rule.
//!
//! Each round adds the path route `prop.bench.test/pN` (the call returns
//! once the relay's store has it, without waiting for gateways) and polls
//! the gateway over one persistent HTTP/2 connection until `/pN` answers
//! 200 instead of 404. The clock starts before the admin call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::admin::Admin;
use crate::load::{Endpoint, Percentiles, percentiles};

/// Host of the propagation routes (covered by the bench key's `*.bench.test`).
pub const PROP_HOST: &str = "prop.bench.test";
/// Longest one change may take to show before the round counts as failed.
const ROUND_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Propagation {
    pub changes: usize,
    pub failed: usize,
    /// Admin call until the gateway routes by the new rule.
    pub visible: Percentiles,
    /// The admin call alone (store write).
    pub admin_call: Percentiles,
}

/// Adds the propagation route `path`; with `wait`, answered once the
/// gateways have it.
async fn add_route(admin: &mut Admin, path: &str, target: &str, wait: bool) -> Result<()> {
    let body = serde_json::json!({ "host": PROP_HOST, "path": path, "target": target });
    let uri = if wait { "/api/routes?wait=1" } else { "/api/routes" };
    let (status, reply) = admin.call(Method::POST, uri, Some(body)).await?;
    if status != StatusCode::CREATED {
        bail!("adding route {path}: {status} {reply}");
    }
    Ok(())
}

/// Runs `changes` rounds against a running Routehub.
pub async fn run(
    gateway: &Endpoint,
    admin_addr: SocketAddr,
    token: &str,
    backend: SocketAddr,
    changes: usize,
) -> Result<Propagation> {
    let target = format!("http://{backend}");
    let mut admin = Admin::connect(admin_addr, token.to_owned()).await?;
    // A first route so the gateway knows the host (and has its certificate).
    add_route(&mut admin, "/warm", &target, true).await?;
    let ep = gateway.with_host(PROP_HOST)?;
    let mut h2 = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h2.is_none() {
        match ep.connect_h2().await {
            Ok(s) => h2 = Some(s),
            Err(e) if Instant::now() > deadline => return Err(e).context("h2 connection to the gateway"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let Some(mut h2) = h2 else { bail!("no h2 connection") };
    let uri_base = format!("https://{PROP_HOST}:{}", gateway.addr.port());
    let mut visible = Vec::with_capacity(changes);
    let mut calls = Vec::with_capacity(changes);
    let mut failed = 0;
    let mut get = async |path: &str| -> Result<StatusCode> {
        let req = Request::get(format!("{uri_base}{path}")).body(Empty::<Bytes>::new())?;
        h2.ready().await?;
        let resp = h2.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok(status)
    };
    for n in 0..changes {
        let path = format!("/p{n}");
        if get(&path).await? != StatusCode::NOT_FOUND {
            bail!("{PROP_HOST}{path} answered before its route existed; expected 404");
        }
        let t0 = Instant::now();
        add_route(&mut admin, &path, &target, false).await?;
        calls.push(t0.elapsed().as_micros() as u64);
        loop {
            let status = get(&path).await?;
            if status == StatusCode::OK {
                visible.push(t0.elapsed().as_micros() as u64);
                break;
            }
            if t0.elapsed() > ROUND_LIMIT {
                failed += 1;
                break;
            }
        }
    }
    Ok(Propagation {
        changes,
        failed,
        visible: percentiles(visible),
        admin_call: percentiles(calls),
    })
}
