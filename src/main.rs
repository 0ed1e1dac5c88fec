//! The `routehub` binary: flags in, library calls out.

mod demo;
mod deploy_cli;
mod gateway_cli;
#[cfg(test)]
mod overlay_tests;
mod relay_cli;
mod routes_cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "routehub",
    version,
    about = "Public HTTPS for services behind NAT, through reverse tunnels"
)]
struct Cli {
    /// Worker threads [default: the CPUs this process may run on]. With
    /// one, everything runs on a single-threaded runtime, which also lets
    /// QUIC send the packets of many requests in one batch.
    #[arg(long, global = true, env = "ROUTEHUB_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway: the public HTTPS edge that relays connect to; or,
    /// with a subcommand, manage a running one's orgs, hosts, keys, users
    /// and roles through its admin API.
    Gateway(Box<GatewayArgs>),
    /// Run a relay: dial out to gateways and serve local services; or,
    /// with `recover`, rebuild a stopped relay's damaged store.
    Relay(RelayArgs),
    /// Manage a running relay's routes (add, rm, edit, list, history, rollback).
    Routes(routes_cli::RoutesArgs),
    /// Deploy Docker Compose apps on a running relay (apply, list, history,
    /// diff, rollback, logs, status, rm).
    Deploy(deploy_cli::DeployArgs),
    /// Create a relay key (prints the public key for the gateway), or with
    /// --user an end-user key (prints its public JWK).
    Keygen {
        /// Where to write the private key (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// An end-user key for JWT routes, not a relay key.
        #[arg(long)]
        user: bool,
        /// User key type: ed25519 (EdDSA) or p256 (ES256).
        #[arg(long, default_value = "ed25519", requires = "user")]
        key_type: gateway::access::keys::KeyKind,
    },
    /// Mint a token (JWS) for a JWT route, signed with your own user key.
    Token {
        /// Private key from `routehub keygen --user`.
        #[arg(long)]
        key: PathBuf,
        /// The hostname the token opens.
        #[arg(long)]
        aud: String,
        /// Lifetime: 1h, 30m, 7d, or seconds; at most 30d.
        #[arg(long, default_value = "1h", value_parser = gateway_cli::parse_ttl)]
        ttl: u64,
        /// Subject; when given, the gateway checks it names the key's user.
        #[arg(long)]
        sub: Option<String>,
        /// Key id [default: the key's RFC 7638 thumbprint, as the gateway stores it].
        #[arg(long)]
        kid: Option<String>,
    },
    /// Gateway, relay and a demo service in one process, with a dev CA.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// The relay's admin API and dashboard.
        #[arg(long, default_value = "127.0.0.1:7070")]
        relay_admin_listen: SocketAddr,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `routehub gateway`. Each setting is the config file's key of the same
/// name (serde renames say where they differ), laid over the file by
/// `ops::overlay`.
#[derive(clap::Args, Serialize)]
struct GatewayArgs {
    #[command(subcommand)]
    #[serde(skip)]
    manage: Option<gateway_cli::AdminCommand>,
    /// With a subcommand: the gateway's admin listener [default: http://127.0.0.1:9090].
    #[arg(long = "admin", global = true)]
    #[serde(skip)]
    admin_url: Option<String>,
    /// With a subcommand: admin token file [default: admin.token in --data-dir].
    #[arg(long, global = true)]
    #[serde(skip)]
    token_file: Option<PathBuf>,
    /// TOML config file (flags override it).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTPS (TCP) and QUIC (UDP) address [default: 0.0.0.0:443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin address for /metrics, /healthz and the admin API [default:
    /// 127.0.0.1:9090]; loopback only unless the config file sets
    /// dangerous_admin_public = true.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// File of `<public key> <hostname>[,<hostname>...]` lines.
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    /// The gateway's own hostname (repeatable) [default: localhost].
    #[arg(long = "name")]
    names: Vec<String>,
    /// Another gateway replica relays should also connect to (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Seconds in-flight requests may take after SIGTERM.
    #[arg(long)]
    #[serde(rename = "drain_timeout_secs")]
    drain_timeout: Option<u64>,
    /// Seconds a relay's local service may take to start answering; then
    /// 504 naming the route [default: 100].
    #[arg(long)]
    #[serde(rename = "response_timeout_secs")]
    response_timeout: Option<u64>,
    /// Plain-HTTP address for ACME HTTP-01 and redirects to https, `off`,
    /// or `auto` [default: auto = 0.0.0.0:80 with ACME, else off].
    #[arg(long)]
    http_listen: Option<gateway::config::HttpListen>,
    #[command(flatten)]
    acme: AcmeArgs,
}

/// The `[acme]` section as flags.
#[derive(clap::Args, Serialize)]
struct AcmeArgs {
    /// ACME directory URL: certificates from this CA instead of the dev CA
    /// (e.g. https://acme-v02.api.letsencrypt.org/directory).
    #[arg(long)]
    #[serde(rename = "directory")]
    acme_directory: Option<String>,
    /// Contact email for the ACME account.
    #[arg(long)]
    #[serde(rename = "email")]
    acme_email: Option<String>,
    /// Extra root certificate (PEM) to trust for the ACME server's HTTPS.
    #[arg(long)]
    #[serde(rename = "ca_root")]
    acme_ca_root: Option<PathBuf>,
    /// Challenge type [default: auto = TLS-ALPN-01, then HTTP-01].
    #[arg(long, value_parser = ["tls-alpn-01", "http-01", "auto"])]
    #[serde(rename = "challenge")]
    acme_challenge: Option<String>,
    /// External Account Binding key id (CAs that need one).
    #[arg(long)]
    #[serde(rename = "eab_kid")]
    acme_eab_kid: Option<String>,
    /// External Account Binding HMAC key, base64url.
    #[arg(long, env = "ROUTEHUB_ACME_EAB_HMAC_KEY", hide_env_values = true)]
    #[serde(rename = "eab_hmac_key")]
    acme_eab_hmac_key: Option<String>,
    /// Most ACME orders started per hour.
    #[arg(long)]
    #[serde(rename = "orders_per_hour")]
    acme_orders_per_hour: Option<u32>,
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Rebuild a damaged store (relay.db) from its last backup and its
    /// change journal, keeping the damaged files aside. Stop the relay first.
    Recover {
        /// The relay's data dir [default: --data-dir, else data_dir in --config, else the relay's default].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `routehub relay`, laid over the config file like [`GatewayArgs`];
/// `--route` adds to the file's `[[route]]` entries.
#[derive(clap::Args, Serialize)]
struct RelayArgs {
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<RelayCommand>,
    /// TOML config file (flags override it).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Gateway address(es), `host[:port]`, comma-separated or repeated.
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// Private key file (from `routehub keygen`).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA certificate to trust for gateways (e.g. a dev CA's ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Gateway TLS name, when --gateway is an IP address.
    #[arg(long)]
    server_name: Option<String>,
    /// HOST[/PATH]=URL, repeatable; URL may be a bare port. Seeds the
    /// store: each is added once, ever (a route later removed with
    /// `routehub routes rm` stays removed).
    #[arg(long = "route")]
    #[serde(rename = "route")]
    routes: Vec<relay::RouteConfig>,
    /// auto (QUIC, falling back to TCP on port 443), quic or tcp.
    #[arg(long)]
    transport: Option<relay::TransportMode>,
    /// Seconds between attempts to move back to QUIC while on TCP.
    #[arg(long)]
    #[serde(rename = "quic_retry_secs")]
    quic_retry: Option<u64>,
    /// Seconds in-flight requests may take after SIGTERM.
    #[arg(long)]
    #[serde(rename = "drain_timeout_secs")]
    drain_timeout: Option<u64>,
    /// Where the store and the admin token live [default: ~/.local/share/routehub/relay].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Admin API and dashboard address [default: 127.0.0.1:7070]; loopback
    /// only unless the config file sets dangerous_admin_public = true.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// The Docker Engine socket whose containers' labels make routes
    /// [default: /var/run/docker.sock]; `label_routes = false` in the
    /// config file turns label routes off.
    #[arg(long)]
    docker_socket: Option<PathBuf>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_gateway(mut args: GatewayArgs) -> Result<()> {
    if let Some(cmd) = args.manage.take() {
        let admin = args.admin_url.as_deref().unwrap_or("http://127.0.0.1:9090");
        return gateway_cli::run(cmd, admin, args.token_file.as_deref(), args.data_dir.as_deref()).await;
    }
    let config: gateway::GatewayConfig = ops::overlay::load(args.config.as_deref(), &args, &[])?;
    let gw = gateway::Gateway::start(config).await?;
    match gw.ca_cert_path() {
        Some(ca) => eprintln!("dev CA root: {}", ca.display()),
        None => eprintln!("certificates from ACME, ordered on the first request for each registered name"),
    }
    shutdown_signal().await;
    gw.shutdown();
    gw.wait().await;
    Ok(())
}

async fn run_relay(mut args: RelayArgs) -> Result<()> {
    let command = args.command.take();
    let config: relay::RelayConfig = ops::overlay::load(args.config.as_deref(), &args, &["route"])?;
    if let Some(RelayCommand::Recover { data_dir }) = command {
        return relay_cli::recover(&data_dir.unwrap_or(config.data_dir));
    }
    let relay = relay::Relay::start(config).await?;
    shutdown_signal().await;
    relay.shutdown();
    relay.wait().await;
    Ok(())
}

fn keygen(out: PathBuf) -> Result<()> {
    let key = tunnel_proto::RelayKey::generate()?;
    key.save_new(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", key.public_key());
    eprintln!("private key written to {} (mode 0600)", out.display());
    eprintln!(
        "on the gateway, add to the authorized keys file:  {} <hostname>[,<hostname>...]",
        key.public_key()
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing();
    // The one crypto provider; everything below asks for ring explicitly too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = match threads {
        0 => anyhow::bail!("--threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Gateway(args) => run_gateway(*args).await,
            Command::Relay(args) => run_relay(args).await,
            Command::Routes(args) => routes_cli::run(args).await,
            Command::Deploy(args) => deploy_cli::run(args).await,
            Command::Keygen {
                out,
                user: true,
                key_type,
            } => gateway_cli::keygen_user(&out, key_type),
            Command::Keygen { out, .. } => keygen(out),
            Command::Token {
                key,
                aud,
                ttl,
                sub,
                kid,
            } => gateway_cli::token(&key, &aud, ttl, sub, kid),
            Command::Demo {
                listen,
                admin_listen,
                relay_admin_listen,
                data_dir,
            } => {
                let data_dir = data_dir.unwrap_or_else(|| ops::fs::default_data_dir("demo"));
                let opts = demo::DemoOptions {
                    listen,
                    admin_listen,
                    relay_admin_listen,
                    data_dir,
                };
                demo::run(opts, shutdown_signal()).await
            }
        }
    })
}
