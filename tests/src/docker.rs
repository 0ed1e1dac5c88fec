//! The machine's Docker Engine for tests: a busybox image built here
//! (`FROM scratch` and the static busybox, also as `/bin/sh` for
//! healthchecks; nothing is pulled) and
//! containers that are removed when their guard drops.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// The image every test container runs: `/bin/busybox` as entry point.
pub const IMAGE: &str = "routehub-test-busybox:2";
/// Where the engine listens on these machines.
pub const SOCKET: &str = "/var/run/docker.sock";

/// A Docker Engine to test against, with [`IMAGE`] built. `Ok(None)` when
/// there is no engine and this is not CI (where its absence fails).
pub async fn engine() -> Result<Option<Docker>> {
    let up = Path::new(SOCKET).exists() && docker(&["version", "--format", "{{.Server.APIVersion}}"]).await.is_ok();
    if !up {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("no Docker Engine at {SOCKET}");
        }
        eprintln!("skipping: no Docker Engine at {SOCKET}");
        return Ok(None);
    }
    build_image().await?;
    Ok(Some(Docker))
}

/// Builds [`IMAGE`] once per machine (tests building it at once share the
/// result: the build is the same).
async fn build_image() -> Result<()> {
    if docker(&["image", "inspect", IMAGE]).await.is_ok() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is not installed (scripts/test.sh installs busybox-static)")?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(busybox, dir.path().join("busybox"))?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENTRYPOINT [\"/bin/busybox\"]\n",
    )?;
    let context = dir.path().to_str().context("temp dir path")?;
    docker(&["build", "-q", "-t", IMAGE, context]).await?;
    Ok(())
}

/// Builds image `tag` from [`IMAGE`] with `/www/index.html` holding
/// `body`: a web image whose content says which build it is.
pub async fn build_web_image(tag: &str, body: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("index.html"), format!("{body}\n"))?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY index.html /www/index.html\n"),
    )?;
    let context = dir.path().to_str().context("temp dir path")?;
    docker(&["build", "-q", "-t", tag, context]).await?;
    Ok(())
}

/// Runs `docker ARGS`; its stdout, or an error with its stderr.
pub async fn docker(args: &[&str]) -> Result<String> {
    let out = tokio::time::timeout(Duration::from_secs(120), Command::new("docker").args(args).output())
        .await
        .with_context(|| format!("docker {args:?} timed out"))??;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The engine the tests use.
pub struct Docker;

impl Docker {
    /// Starts a busybox web server named `name` answering `body` on port
    /// 8080 at `/` and under `/api/`, with `args` before the image (labels,
    /// healthchecks). Removed when the guard drops.
    pub async fn web(&self, name: &str, body: &str, args: &[&str]) -> Result<Container> {
        // A leftover of an interrupted run goes first.
        let _ = docker(&["rm", "-f", name]).await;
        let script = format!(
            "/bin/busybox mkdir -p /www/api && echo {body} > /www/index.html && echo {body} > /www/api/index.html \
             && exec /bin/busybox httpd -f -p 8080 -h /www"
        );
        let mut all = vec!["run", "-d", "--name", name, "--label", "routehub.test=1"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[IMAGE, "sh", "-c", &script]);
        docker(&all).await?;
        Ok(Container { name: name.to_owned() })
    }
}

/// A test container, removed (`docker rm -f`) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    pub async fn kill(&self) -> Result<()> {
        docker(&["kill", &self.name]).await.map(|_| ())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A unix socket in front of the engine's that a test can cut and
/// restore: the engine going away and coming back, as a daemon restart
/// looks to a client, without restarting the machine's daemon.
pub struct SocketProxy {
    pub path: std::path::PathBuf,
    serving: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl SocketProxy {
    /// Listening at once, forwarding to [`SOCKET`].
    pub fn start() -> Result<SocketProxy> {
        let dir = tempfile::tempdir()?;
        let mut proxy = SocketProxy {
            path: dir.path().join("docker.sock"),
            serving: None,
            _dir: dir,
        };
        proxy.restore()?;
        Ok(proxy)
    }

    /// Closes every connection through it and stops listening (the socket
    /// file goes, as a stopped daemon's does).
    pub fn cut(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Listens again.
    pub fn restore(&mut self) -> Result<()> {
        self.cut();
        let listener = tokio::net::UnixListener::bind(&self.path)?;
        self.serving = Some(tokio::spawn(async move {
            // Connections end with this task: aborting it drops them all.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        }));
        Ok(())
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
