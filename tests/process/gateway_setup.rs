//! `routehub gateway` as users start it: what it writes to its data dir
//! (and with which modes, whatever the umask), and where its admin
//! listener may listen.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::wait_until;
use tokio::process::{Child, Command};

use super::{BIN, free_tcp_udp_port};

/// `routehub gateway <args>` under `umask 002` (group-writable by
/// default, as on many shared hosts), dying with the test.
fn gateway_under_umask(args: &[&str], data_dir: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("umask 002 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("gateway")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http-listen", "off"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn routehub gateway")
}

/// Waits until something accepts on `127.0.0.1:port`.
async fn accepting(port: u16) -> bool {
    wait_until(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .is_some()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_dir_is_private_and_the_dev_ca_root_readable_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (https, admin) = (free_tcp_udp_port(), free_tcp_udp_port());
    let _gateway = gateway_under_umask(
        &[
            "--listen",
            &format!("127.0.0.1:{https}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
        &data,
    );
    assert!(accepting(admin).await, "the gateway process never listened");
    assert_eq!(mode(&data), 0o700, "the data dir holds keys and the admin token");
    assert_eq!(mode(&data.join(ops::TOKEN_FILE)), 0o600);
    assert_eq!(mode(&data.join("ca-key.pem")), 0o600);
    assert_eq!(
        mode(&data.join("ca.pem")),
        0o644,
        "users hand the root to curl --cacert"
    );
}

#[tokio::test]
async fn a_public_admin_address_is_refused_unless_the_config_file_forces_it() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_tcp_udp_port();
    let public = format!("0.0.0.0:{admin}");
    let refused = gateway_under_umask(
        &["--listen", "127.0.0.1:0", "--admin-listen", &public],
        &dir.path().join("refused"),
    );
    let out = tokio::time::timeout(Duration::from_secs(30), refused.wait_with_output())
        .await
        .expect("exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{public} is not a loopback address"))
            && stderr.contains("dangerous_admin_public = true"),
        "{stderr}"
    );

    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("admin_listen = \"{public}\"\ndangerous_admin_public = true\n"),
    )
    .unwrap();
    let mut forced = gateway_under_umask(
        &["--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()],
        &dir.path().join("forced"),
    );
    assert!(accepting(admin).await, "the override lets it listen on {public}");
    assert!(forced.try_wait().unwrap().is_none(), "still running");
}
