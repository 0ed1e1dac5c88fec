//! `routehub gateway org|host|relay-key|user|role …`: the gateway's admin
//! API from the command line, and `keygen --user` / `token` for end users.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gateway::access::jws::{Claims, mint};
use gateway::access::keys::{KeyKind, UserPublicKey, UserSigningKey};
use http::Method;
use ops::{AdminClient, TokenLookup};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Organisations: own hostnames, relay keys, users and roles.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Hostnames (exact or `*.suffix`) owned by an org.
    #[command(subcommand)]
    Host(HostCommand),
    /// Relay keys of an org (they may serve the org's hostnames).
    #[command(subcommand, name = "relay-key")]
    RelayKey(RelayKeyCommand),
    /// Users, their public keys and roles.
    #[command(subcommand)]
    User(UserCommand),
    /// Roles of an org and the permissions they grant.
    #[command(subcommand)]
    Role(RoleCommand),
}

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Add an org, or change its client CA / allowed policies.
    Add {
        name: String,
        /// PEM CA certificate that issues the org's client certificates (mTLS).
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// Route policies the org's routes may use (comma-separated: public,jwt,mtls).
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
    },
    List,
    /// Remove an org with its hostnames, relay keys and memberships.
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum HostCommand {
    Add {
        pattern: String,
        #[arg(long)]
        org: String,
    },
    List,
    Rm {
        pattern: String,
    },
}

#[derive(Subcommand)]
pub enum RelayKeyCommand {
    /// Add a relay public key (from `routehub keygen`) to an org.
    Add {
        key: String,
        #[arg(long)]
        org: String,
    },
    List,
    /// Remove a key; its relay sessions close at once.
    Rm {
        key: String,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user, or add orgs, keys and roles to one.
    Add {
        name: String,
        /// Org membership (repeatable).
        #[arg(long = "org")]
        orgs: Vec<String>,
        /// Public key: a file or the text of a JWK or PEM (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// `org/project=role` or `org=role` (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    List,
    /// Remove a user, or only one of its keys (`--key KID`).
    Rm {
        name: String,
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RoleCommand {
    /// Define a role of an org (or add permissions to it).
    Add {
        org: String,
        name: String,
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    List,
    Rm {
        org: String,
        name: String,
    },
}

/// `%XX`-encodes everything but unreserved characters, for path segments.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Environment variable that may hold the gateway's admin token itself.
pub const TOKEN_ENV: &str = "ROUTEHUB_GATEWAY_ADMIN_TOKEN";

/// A key given as a file path or as the key text itself.
fn key_text(arg: &str) -> Result<String> {
    let p = Path::new(arg);
    if !arg.trim_start().starts_with('{') && !arg.contains("-----BEGIN") && p.exists() {
        return std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    }
    Ok(arg.to_owned())
}

/// Runs one admin command against the gateway at `admin`.
pub async fn run(command: AdminCommand, admin: &str, token_file: Option<&Path>, data_dir: Option<&Path>) -> Result<()> {
    let default_dirs = [ops::fs::default_data_dir("gateway")];
    let lookup = TokenLookup {
        role: "gateway",
        env: TOKEN_ENV,
        default_dirs: &default_dirs,
    };
    let token = ops::find_token(token_file, data_dir, &lookup)?;
    let api = AdminClient::new(admin, token);
    let (method, path, body): (Method, String, Option<Value>) = match command {
        AdminCommand::Org(c) => match c {
            OrgCommand::Add { name, client_ca, allow } => {
                let mut body = json!({ "name": name });
                if let Some(ca) = client_ca {
                    body["client_ca"] =
                        json!(std::fs::read_to_string(&ca).with_context(|| format!("reading {}", ca.display()))?);
                }
                if !allow.is_empty() {
                    body["allowed_policies"] = json!(allow);
                }
                (Method::POST, "/v1/orgs".into(), Some(body))
            }
            OrgCommand::List => (Method::GET, "/v1/orgs".into(), None),
            OrgCommand::Rm { name } => (Method::DELETE, format!("/v1/orgs/{}", seg(&name)), None),
        },
        AdminCommand::Host(c) => match c {
            HostCommand::Add { pattern, org } => (
                Method::POST,
                "/v1/hosts".into(),
                Some(json!({"pattern": pattern, "org": org})),
            ),
            HostCommand::List => (Method::GET, "/v1/hosts".into(), None),
            HostCommand::Rm { pattern } => (Method::DELETE, format!("/v1/hosts/{}", seg(&pattern)), None),
        },
        AdminCommand::RelayKey(c) => match c {
            RelayKeyCommand::Add { key, org } => (
                Method::POST,
                "/v1/relay-keys".into(),
                Some(json!({"key": key, "org": org})),
            ),
            RelayKeyCommand::List => (Method::GET, "/v1/relay-keys".into(), None),
            RelayKeyCommand::Rm { key } => (Method::DELETE, format!("/v1/relay-keys/{}", seg(&key)), None),
        },
        AdminCommand::User(c) => match c {
            UserCommand::Add {
                name,
                orgs,
                keys,
                roles,
            } => {
                let keys = keys.iter().map(|k| key_text(k)).collect::<Result<Vec<_>>>()?;
                (
                    Method::POST,
                    "/v1/users".into(),
                    Some(json!({"name": name, "orgs": orgs, "keys": keys, "roles": roles})),
                )
            }
            UserCommand::List => (Method::GET, "/v1/users".into(), None),
            UserCommand::Rm { name, key: None } => (Method::DELETE, format!("/v1/users/{}", seg(&name)), None),
            UserCommand::Rm { name, key: Some(kid) } => (
                Method::DELETE,
                format!("/v1/users/{}/keys/{}", seg(&name), seg(&kid)),
                None,
            ),
        },
        AdminCommand::Role(c) => match c {
            RoleCommand::Add { org, name, permissions } => (
                Method::POST,
                "/v1/roles".into(),
                Some(json!({"org": org, "name": name, "permissions": permissions})),
            ),
            RoleCommand::List => (Method::GET, "/v1/roles".into(), None),
            RoleCommand::Rm { org, name } => (Method::DELETE, format!("/v1/roles/{}/{}", seg(&org), seg(&name)), None),
        },
    };
    let json: Value = api.call(method, &path, body).await?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// `routehub keygen --user`: writes the private key (PKCS#8 PEM, 0600,
/// never overwriting) and prints the public JWK on one line.
pub fn keygen_user(out: &Path, kind: KeyKind) -> Result<()> {
    let key = UserSigningKey::generate(kind).map_err(anyhow::Error::msg)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(out)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", out.display()))?;
    f.write_all(key.to_pem().as_bytes())?;
    f.sync_all()?;
    let public = key.public_key();
    println!("{}", public.to_jwk(&public.thumbprint()));
    eprintln!(
        "private key written to {} (mode 0600); key id {}",
        out.display(),
        public.thumbprint()
    );
    eprintln!("give the gateway the public key:  routehub gateway user add NAME --org ORG --key '<the JSON above>'");
    Ok(())
}

/// Longest lifetime `routehub token` mints: what the gateway accepts.
pub use gateway::access::jws::MAX_TOKEN_TTL_SECS;

/// `1h`, `30m`, `45s`, `7d` or plain seconds; at most
/// [`MAX_TOKEN_TTL_SECS`].
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (like 1h, 30m, 3600)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (s, m, h or d)")),
    };
    n.checked_mul(mult)
        .filter(|&t| t > 0 && t <= MAX_TOKEN_TTL_SECS)
        .ok_or_else(|| {
            format!(
                "token lifetime {s:?} must be between 1s and {}d: a token cannot be revoked short of removing its key, so mint a new one when it expires",
                MAX_TOKEN_TTL_SECS / 86_400
            )
        })
}

/// `routehub token`: a JWS for `aud`, signed with the user's own key.
pub fn token(key: &Path, aud: &str, ttl: u64, sub: Option<String>, kid: Option<String>) -> Result<()> {
    let pem = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let key = UserSigningKey::from_pem(&pem).map_err(anyhow::Error::msg)?;
    let aud = tunnel_proto::names::normalize_hostname(aud)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = Claims {
        sub,
        aud,
        exp: now + ttl,
        nbf: None,
        iat: Some(now),
    };
    let public: UserPublicKey = key.public_key();
    let kid = kid.unwrap_or_else(|| public.thumbprint());
    println!("{}", mint(&key, &kid, &claims).map_err(anyhow::Error::msg)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_segments() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert!(parse_ttl("0s").is_err());
        assert_eq!(parse_ttl("30d"), Ok(MAX_TOKEN_TTL_SECS));
        assert!(parse_ttl("31d").unwrap_err().contains("30d"));
        assert!(parse_ttl(&(MAX_TOKEN_TTL_SECS + 1).to_string()).is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert_eq!(seg("*.a.test"), "%2A.a.test");
    }
}
