//! The systems under test, each started as real processes in front of the
//! same backend: a direct connection, Routehub over QUIC and over TCP,
//! rathole (plain TCP and noise) and bore.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::load::Endpoint;
use crate::procs::{Proc, free_port};

/// Hostname the Routehub cases route.
pub const BENCH_HOST: &str = "bench.test";
/// How long a system may take to come up.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The cases, in report order.
pub const CASES: &[&str] = &[
    "direct",
    "routehub-quic",
    "routehub-tcp",
    "rathole",
    "rathole-noise",
    "bore",
];

/// What each case carries, for the report.
pub fn carries(case: &str) -> &'static str {
    match case {
        "direct" => "plain HTTP, no tunnel",
        "routehub-quic" => "HTTPS end to end; QUIC tunnel",
        "routehub-tcp" => "HTTPS end to end; TCP+TLS+h2 tunnel",
        "rathole" => "plain TCP tunnel, no encryption",
        "rathole-noise" => "TCP tunnel, Noise encryption",
        "bore" => "plain TCP tunnel, no encryption",
        _ => "",
    }
}

/// A running system under test.
pub struct Running {
    pub case: String,
    pub endpoint: Endpoint,
    /// The tunnel's processes (measured for CPU and memory); empty for direct.
    pub procs: Vec<Proc>,
    /// Routehub only: the relay's admin API and token.
    pub relay_admin: Option<(SocketAddr, String)>,
}

impl Running {
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// Where binaries are looked for.
pub struct Binaries {
    pub routehub: Option<PathBuf>,
    pub rathole: Option<PathBuf>,
    pub bore: Option<PathBuf>,
}

impl Binaries {
    pub fn find() -> Binaries {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let routehub = std::env::var_os("ROUTEHUB_BIN")
            .map(PathBuf::from)
            .or_else(|| exe_dir.map(|d| d.join("routehub")))
            .filter(|p| p.is_file());
        Binaries {
            routehub,
            rathole: find_peer("rathole"),
            bore: find_peer("bore"),
        }
    }

    /// Why `case` can't run here, with how to fix it.
    pub fn missing(&self, case: &str) -> Option<String> {
        let (have, what) = match case {
            "direct" => return None,
            "routehub-quic" | "routehub-tcp" => (self.routehub.is_some(), "routehub"),
            "rathole" | "rathole-noise" => (self.rathole.is_some(), "rathole"),
            "bore" => (self.bore.is_some(), "bore"),
            _ => return Some(format!("unknown case {case:?}")),
        };
        if have {
            return None;
        }
        Some(if what == "routehub" {
            "no release routehub binary next to this one: run `cargo build --release` first (or set ROUTEHUB_BIN)"
                .to_owned()
        } else {
            format!("{what} not found in $PEERS_ROOT/bin, ~/.cache/peers/bin or PATH: run scripts/bench-setup.sh")
        })
    }
}

/// `$PEERS_ROOT/bin`, `~/.cache/peers/bin`, then `PATH`.
fn find_peer(name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os("PEERS_ROOT") {
        dirs.push(PathBuf::from(root).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/peers/bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Starts `case` in front of `backend`, its processes pinned to `cpus`.
pub async fn start(case: &str, bins: &Binaries, backend: SocketAddr, dir: &Path, cpus: &str) -> Result<Running> {
    let dir = dir.join(case);
    std::fs::create_dir_all(&dir)?;
    let running = match case {
        "direct" => Running {
            case: case.into(),
            endpoint: Endpoint::plain(backend),
            procs: Vec::new(),
            relay_admin: None,
        },
        "routehub-quic" => routehub(case, bins, backend, &dir, cpus, "quic").await?,
        "routehub-tcp" => routehub(case, bins, backend, &dir, cpus, "tcp").await?,
        "rathole" => rathole(case, bins, backend, &dir, cpus, false).await?,
        "rathole-noise" => rathole(case, bins, backend, &dir, cpus, true).await?,
        "bore" => bore(case, bins, backend, &dir, cpus).await?,
        _ => bail!("unknown case {case:?}"),
    };
    running.endpoint.wait_ready(READY_WITHIN).await.with_context(|| {
        let logs: Vec<String> = running.procs.iter().map(|p| p.log.display().to_string()).collect();
        format!("{case} did not come up (logs: {})", logs.join(", "))
    })?;
    Ok(running)
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

async fn routehub(
    case: &str,
    bins: &Binaries,
    backend: SocketAddr,
    dir: &Path,
    cpus: &str,
    transport: &str,
) -> Result<Running> {
    let bin = bins.routehub.as_ref().context("no routehub binary")?;
    let key_path = dir.join("relay.key");
    let key = tunnel_proto::RelayKey::generate()?;
    key.save_new(&key_path)?;
    let keys_path = dir.join("authorized_keys");
    std::fs::write(
        &keys_path,
        format!("{} {BENCH_HOST},*.{BENCH_HOST}\n", key.public_key()),
    )?;
    let port = free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let gw_admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let relay_admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let gw_args = vec![
        s("gateway"),
        s("--data-dir"),
        s(dir.join("gateway").display()),
        s("--listen"),
        s(listen),
        s("--admin-listen"),
        s(gw_admin),
        s("--http-listen"),
        s("off"),
        s("--authorized-keys"),
        s(keys_path.display()),
        s("--name"),
        s("localhost"),
    ];
    let mut gateway = Proc::spawn(
        &format!("{case} gateway"),
        Some(cpus),
        bin,
        &gw_args,
        dir.join("gateway.log"),
    )?;
    let ca = PathBuf::from(gateway.wait_log("dev CA root:", READY_WITHIN)?);
    let relay_dir = dir.join("relay");
    let relay_args = vec![
        s("relay"),
        s("--gateway"),
        s(listen),
        s("--key"),
        s(key_path.display()),
        s("--ca"),
        s(ca.display()),
        s("--server-name"),
        s("localhost"),
        s("--route"),
        format!("{BENCH_HOST}=http://{backend}"),
        s("--transport"),
        s(transport),
        s("--data-dir"),
        s(relay_dir.display()),
        s("--admin-listen"),
        s(relay_admin),
    ];
    let relay = Proc::spawn(
        &format!("{case} relay"),
        Some(cpus),
        bin,
        &relay_args,
        dir.join("relay.log"),
    )?;
    let endpoint = Endpoint::tls(listen, BENCH_HOST, &ca)?;
    // The relay writes its admin token when it starts.
    let token_path = relay_dir.join("admin.token");
    let deadline = std::time::Instant::now() + READY_WITHIN;
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(&token_path)
            && !t.trim().is_empty()
        {
            break t.trim().to_owned();
        }
        if std::time::Instant::now() > deadline {
            bail!("the relay wrote no admin token in {}", token_path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Running {
        case: case.into(),
        endpoint,
        procs: vec![gateway, relay],
        relay_admin: Some((relay_admin, token)),
    })
}

async fn rathole(
    case: &str,
    bins: &Binaries,
    backend: SocketAddr,
    dir: &Path,
    cpus: &str,
    noise: bool,
) -> Result<Running> {
    let bin = bins.rathole.as_ref().context("no rathole binary")?;
    let control = free_port()?;
    let public = free_port()?;
    let (mut server_transport, mut client_transport) = (String::new(), String::new());
    if noise {
        let out = std::process::Command::new(bin).arg("--genkey").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let value_after = |label: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(label))
                .and_then(|i| lines.get(i + 1))
                .map(|v| v.to_string())
        };
        let private = value_after("Private Key").context("rathole --genkey printed no private key")?;
        let public_key = value_after("Public Key").context("rathole --genkey printed no public key")?;
        server_transport = format!(
            "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"
        );
        client_transport = format!(
            "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public_key}\"\n"
        );
    }
    let server_toml = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"routehub-bench\"\n{server_transport}\n[server.services.bench]\nbind_addr = \"127.0.0.1:{public}\"\n"
    );
    let client_toml = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"routehub-bench\"\n{client_transport}\n[client.services.bench]\nlocal_addr = \"{backend}\"\n"
    );
    std::fs::write(dir.join("server.toml"), server_toml)?;
    std::fs::write(dir.join("client.toml"), client_toml)?;
    let server = Proc::spawn(
        &format!("{case} server"),
        Some(cpus),
        bin,
        &[s("-s"), s(dir.join("server.toml").display())],
        dir.join("server.log"),
    )?;
    let client = Proc::spawn(
        &format!("{case} client"),
        Some(cpus),
        bin,
        &[s("-c"), s(dir.join("client.toml").display())],
        dir.join("client.log"),
    )?;
    Ok(Running {
        case: case.into(),
        endpoint: Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], public))),
        procs: vec![server, client],
        relay_admin: None,
    })
}

async fn bore(case: &str, bins: &Binaries, backend: SocketAddr, dir: &Path, cpus: &str) -> Result<Running> {
    let bin = bins.bore.as_ref().context("no bore binary")?;
    if std::net::TcpListener::bind("127.0.0.1:7835").is_err() {
        bail!("bore's control port 127.0.0.1:7835 is taken");
    }
    let public = free_port()?;
    let server = Proc::spawn(
        &format!("{case} server"),
        Some(cpus),
        bin,
        &[
            s("server"),
            s("--bind-addr"),
            s("127.0.0.1"),
            s("--min-port"),
            s(public),
            s("--max-port"),
            s(public),
        ],
        dir.join("server.log"),
    )?;
    // The client needs the server's control port up.
    let deadline = std::time::Instant::now() + READY_WITHIN;
    while tokio::net::TcpStream::connect("127.0.0.1:7835").await.is_err() {
        if std::time::Instant::now() > deadline {
            bail!("bore server did not listen on 7835");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Proc::spawn(
        &format!("{case} local"),
        Some(cpus),
        bin,
        &[
            s("local"),
            s(backend.port()),
            s("--local-host"),
            s(backend.ip()),
            s("--to"),
            s("127.0.0.1"),
            s("--port"),
            s(public),
        ],
        dir.join("local.log"),
    )?;
    Ok(Running {
        case: case.into(),
        endpoint: Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], public))),
        procs: vec![server, client],
        relay_admin: None,
    })
}
