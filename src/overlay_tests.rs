//! Each flag of `routehub gateway` and `routehub relay` lands on the config
//! key it names, over a config file or over the defaults.

use std::path::{Path, PathBuf};

use clap::Parser;

use super::{Cli, Command, GatewayArgs, RelayArgs};

fn gateway_args(flags: &[&str]) -> GatewayArgs {
    let cli = Cli::try_parse_from(["routehub", "gateway"].iter().chain(flags)).unwrap();
    match cli.command {
        Command::Gateway(args) => *args,
        _ => unreachable!("parsed as gateway"),
    }
}

fn relay_args(flags: &[&str]) -> RelayArgs {
    let cli = Cli::try_parse_from(["routehub", "relay"].iter().chain(flags)).unwrap();
    match cli.command {
        Command::Relay(args) => args,
        _ => unreachable!("parsed as relay"),
    }
}

fn gateway(file: Option<&Path>, flags: &[&str]) -> gateway::GatewayConfig {
    ops::overlay::load(file, &gateway_args(flags), &[]).unwrap()
}

fn relay(file: Option<&Path>, flags: &[&str]) -> relay::RelayConfig {
    ops::overlay::load(file, &relay_args(flags), &["route"]).unwrap()
}

fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn no_flags_no_file_is_the_default_config() {
    let (got, want) = (gateway(None, &[]), gateway::GatewayConfig::default());
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
    let (got, want) = (relay(None, &[]), relay::RelayConfig::default());
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
}

#[test]
fn every_gateway_flag_sets_its_key() {
    let c = gateway(
        None,
        &[
            "--data-dir",
            "/d",
            "--listen",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:2",
            "--authorized-keys",
            "/k",
            "--name",
            "a.test",
            "--name",
            "b.test",
            "--peer",
            "p.test:1",
            "--heartbeat-ms",
            "500",
            "--drain-timeout",
            "3",
            "--response-timeout",
            "7",
            "--http-listen",
            "off",
            "--acme-directory",
            "https://ca.test/dir",
            "--acme-email",
            "ops@a.test",
            "--acme-ca-root",
            "/r.pem",
            "--acme-challenge",
            "http-01",
            "--acme-eab-kid",
            "kid",
            "--acme-eab-hmac-key",
            "hmac",
            "--acme-orders-per-hour",
            "9",
        ],
    );
    assert_eq!(c.data_dir, Path::new("/d"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:1");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:2");
    assert_eq!(c.authorized_keys.as_deref(), Some(Path::new("/k")));
    assert_eq!(c.names, ["a.test", "b.test"]);
    assert_eq!(c.peers, ["p.test:1"]);
    assert_eq!(
        (c.heartbeat_ms, c.drain_timeout_secs, c.response_timeout_secs),
        (500, 3, 7)
    );
    assert_eq!(c.http_listen, gateway::config::HttpListen::Off);
    let acme = c.acme.expect("--acme-directory makes an [acme] section");
    assert_eq!(acme.directory, "https://ca.test/dir");
    assert_eq!(acme.email.as_deref(), Some("ops@a.test"));
    assert_eq!(acme.ca_root.as_deref(), Some(Path::new("/r.pem")));
    assert_eq!(acme.challenge, "http-01");
    assert_eq!(acme.eab_kid.as_deref(), Some("kid"));
    assert_eq!(acme.eab_hmac_key.as_deref(), Some("hmac"));
    assert_eq!(acme.orders_per_hour, 9);
}

#[test]
fn gateway_flags_override_the_file_key_by_key() {
    let (_dir, path) = config_file(
        "names = [\"file.test\"]\nheartbeat_ms = 700\ndangerous_admin_public = true\n\
         [acme]\ndirectory = \"https://file.test/dir\"\nemail = \"file@a.test\"\norders_per_hour = 3\n",
    );
    let c = gateway(Some(&path), &["--name", "flag.test", "--acme-email", "flag@a.test"]);
    assert_eq!(c.names, ["flag.test"], "the flag's list replaces the file's");
    assert_eq!(c.heartbeat_ms, 700);
    assert!(c.dangerous_admin_public, "only the file can say it");
    let acme = c.acme.unwrap();
    assert_eq!(acme.directory, "https://file.test/dir");
    assert_eq!(acme.email.as_deref(), Some("flag@a.test"));
    assert_eq!(acme.orders_per_hour, 3);
}

#[test]
fn acme_flags_without_a_directory_are_refused() {
    let c = gateway(None, &["--acme-email", "ops@a.test"]);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("--acme-directory"), "{err}");
}

#[test]
fn every_relay_flag_sets_its_key_and_routes_add_to_the_file() {
    let (_dir, path) = config_file(
        "gateways = [\"file.test\"]\nquic_retry_secs = 4\n\
         [[route]]\nhost = \"file.test\"\ntarget = \"http://127.0.0.1:1\"\npolicy = { auth = \"jwt\", project = \"a/b\" }\n",
    );
    let c = relay(
        Some(&path),
        &[
            "--gateway",
            "g1.test,g2.test",
            "--key",
            "/k",
            "--ca",
            "/ca.pem",
            "--server-name",
            "gw.test",
            "--route",
            "flag.test/api=8080",
            "--transport",
            "tcp",
            "--drain-timeout",
            "6",
            "--data-dir",
            "/d",
            "--admin-listen",
            "127.0.0.1:3",
        ],
    );
    assert_eq!(c.gateways, ["g1.test,g2.test"]);
    assert_eq!(c.key, Path::new("/k"));
    assert_eq!(c.ca.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(c.server_name.as_deref(), Some("gw.test"));
    let hosts: Vec<(&str, &str, &str)> = c
        .routes
        .iter()
        .map(|r| (r.host.as_str(), r.path.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [("file.test", "/", "http://127.0.0.1:1"), ("flag.test", "/api", "8080")]
    );
    assert_eq!(c.routes[0].policy["auth"], "jwt", "the file's route keeps its policy");
    assert_eq!(c.transport, relay::TransportMode::Tcp);
    assert_eq!((c.quic_retry_secs, c.drain_timeout_secs), (4, 6));
    assert_eq!(c.data_dir, Path::new("/d"));
    assert_eq!(c.admin_listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:3"));
    let c = relay(Some(&path), &["--quic-retry", "9"]);
    assert_eq!(
        (c.gateways.as_slice(), c.quic_retry_secs),
        (["file.test".to_owned()].as_slice(), 9)
    );
}
