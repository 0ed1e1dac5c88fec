//! Headless Chromium driven over the DevTools protocol: enough to load a
//! page, run JavaScript in it and read the DOM back.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A running headless browser; killed when dropped.
pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    devtools: String,
}

/// One page (tab) of the browser.
pub struct Page {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

impl Browser {
    /// Starts headless Chromium. `Ok(None)` if it is not installed and this
    /// is not CI (where `scripts/test.sh` installs it and its absence fails).
    pub async fn launch() -> Result<Option<Browser>> {
        let Some(bin) = chromium() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("chromium is not installed (scripts/test.sh installs it)");
            }
            eprintln!("skipping: chromium is not installed (scripts/test.sh installs it)");
            return Ok(None);
        };
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
            ])
            .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromium")?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await
        .context("chromium did not start in 30 s")?
        .context("chromium exited before listening")?;
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let devtools = ws
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow!("odd DevTools address {ws}"))?
            .to_owned();
        Ok(Some(Browser {
            _child: child,
            _profile: profile,
            devtools,
        }))
    }

    /// A page on `relay`'s dashboard, signed in with the admin token in
    /// `data_dir` (passed in the address, as the README shows).
    pub async fn dashboard(&self, relay: &relay::Relay, data_dir: &std::path::Path) -> Result<Page> {
        let admin = relay.admin_addr().context("the relay has no admin listener")?;
        let token = ops::AdminToken::load_or_create(data_dir)?;
        let mut page = self.page().await?;
        page.navigate(&format!("http://{admin}/#token={}", token.secret()))
            .await?;
        Ok(page)
    }

    /// The first page target.
    pub async fn page(&self) -> Result<Page> {
        let tcp = TcpStream::connect(&self.devtools).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("/json/list")
            .header("host", &self.devtools)
            .body(crate::client::empty())?;
        let list: Value = serde_json::from_slice(&crate::client::read(send.send_request(req).await?).await?.body)?;
        let url = list
            .as_array()
            .and_then(|targets| targets.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .ok_or_else(|| anyhow!("no page target in {list}"))?
            .to_owned();
        let tcp = TcpStream::connect(&self.devtools).await?;
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
        Ok(Page { ws, next_id: 1 })
    }
}

impl Page {
    /// Sends a DevTools command and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::text(
                json!({ "id": id, "method": method, "params": params }).to_string(),
            ))
            .await?;
        let reply = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else { continue };
                let v: Value = serde_json::from_str(&text)?;
                if v["id"] == id {
                    return Ok(v);
                }
            }
            bail!("DevTools connection closed")
        })
        .await
        .context("DevTools command timed out")??;
        if let Some(err) = reply.get("error") {
            bail!("{method}: {err}");
        }
        Ok(reply["result"].clone())
    }

    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        self.call("Page.navigate", json!({ "url": url })).await.map(|_| ())
    }

    /// Evaluates a JavaScript expression (awaiting promises) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("JavaScript error: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy or `within` passes.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(v) = self.eval(expression).await
                && !matches!(v, Value::Null | Value::Bool(false))
                && v != json!("")
            {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out waiting for {expression}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
