//! Compose projects through the compose CLI, as Dockge, Dokploy and
//! Coolify do: no Rust library implements compose's merge, interpolation
//! and recreate logic. `docker compose` (the v2 plugin) where it is
//! installed, else `docker-compose` (v1); neither: deployments are off,
//! with the reason.
//!
//! Every run has a timeout and is killed past it; its output is kept up
//! to [`MAX_OUTPUT`] bytes (the end, where errors are). The compose file
//! is written 0600 into a directory of its own for the run and removed
//! after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::error::Error;

/// Largest compose file accepted.
pub const MAX_COMPOSE_FILE: usize = 1024 * 1024;
/// Output kept per run: its last bytes.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Longest project name part a user chooses.
pub const MAX_NAME: usize = 40;
/// The relay's environment variables the compose CLI runs with.
const PASSED_ENV: &[&str] = &["PATH", "HOME", "DOCKER_CONFIG", "LANG", "LC_ALL", "TMPDIR"];
/// How long a quick command (`version`, `config`, `ps`) may take.
const QUICK: Duration = Duration::from_secs(30);

/// Checks a compose name a user gives: `[a-z0-9][a-z0-9_-]*`, at most
/// [`MAX_NAME`] characters (compose's own project-name rule, shorter, so
/// that the generation suffix always fits).
pub fn check_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidName {
        name: name.chars().take(MAX_NAME + 8).collect(),
        reason,
    };
    let first = name.bytes().next().ok_or_else(|| invalid("empty"))?;
    if name.len() > MAX_NAME {
        return Err(invalid("longer than 40 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid("must start with a lowercase letter or a digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(invalid("only lowercase letters, digits, '_' and '-'"));
    }
    Ok(())
}

/// The compose project of one generation of a deployment: an old and a
/// new generation run side by side as projects of their own.
pub fn project(name: &str, generation: u64) -> Result<String, Error> {
    check_name(name)?;
    Ok(format!("routehub_{name}_{generation}"))
}

/// What a run printed, and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub ok: bool,
    /// stdout then stderr, the last [`MAX_OUTPUT`] bytes.
    pub text: String,
}

/// The compose CLI found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeCli {
    /// The program and the arguments before compose's own.
    program: Vec<String>,
    /// The engine it talks to (`DOCKER_HOST`): the one the relay follows.
    docker_host: String,
    /// What `version` printed.
    pub version: String,
}

impl ComposeCli {
    /// `docker compose` if the v2 plugin answers, else `docker-compose`;
    /// either talks to the engine at `socket`.
    pub async fn detect(socket: &Path) -> Result<ComposeCli, Error> {
        let mut tried = Vec::new();
        for program in [vec!["docker", "compose"], vec!["docker-compose"]] {
            let program: Vec<String> = program.into_iter().map(str::to_owned).collect();
            let cli = ComposeCli {
                program,
                docker_host: format!("unix://{}", socket.display()),
                version: String::new(),
            };
            match cli.run(&["version"], None, None, QUICK).await {
                Ok(out) if out.ok => {
                    let version = out.text.lines().next().unwrap_or_default().trim().to_owned();
                    return Ok(ComposeCli { version, ..cli });
                }
                Ok(out) => tried.push(format!("`{}`: {}", cli.program.join(" "), out.text.trim())),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(Error::ComposeUnavailable(format!(
            "no compose CLI (tried {})",
            tried.join("; ")
        )))
    }

    /// `docker compose` or `docker-compose`.
    pub fn command(&self) -> String {
        self.program.join(" ")
    }

    /// The configuration compose resolves `spec` to (its `config`), or
    /// compose's error (which names the line and column of bad YAML).
    pub async fn config(&self, project: &str, spec: &Spec<'_>) -> Result<String, Error> {
        let out = self.run_spec(project, spec, &["config"], QUICK).await?;
        if out.ok {
            Ok(out.text)
        } else {
            Err(self.failed("config", out))
        }
    }

    /// The names of the services `spec` defines.
    pub async fn services(&self, project: &str, spec: &Spec<'_>) -> Result<Vec<String>, Error> {
        let out = self.run_spec(project, spec, &["config", "--services"], QUICK).await?;
        if !out.ok {
            return Err(self.failed("config --services", out));
        }
        Ok(out
            .text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// `up -d --remove-orphans` within `timeout`: the project's containers
    /// created or recreated and started. Pulls what is missing.
    pub async fn up(&self, project: &str, spec: &Spec<'_>, timeout: Duration) -> Result<Output, Error> {
        self.run_spec(project, spec, &["up", "-d", "--remove-orphans"], timeout)
            .await
    }

    /// `down --remove-orphans`: the project's containers and networks go.
    /// Takes the project's compose file: v1 reads it even to take a
    /// project down.
    pub async fn down(&self, project: &str, spec: &Spec<'_>, timeout: Duration) -> Result<Output, Error> {
        self.run_spec(project, spec, &["down", "--remove-orphans"], timeout)
            .await
    }

    async fn run_spec(
        &self,
        project: &str,
        spec: &Spec<'_>,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, Error> {
        let files = ComposeFile::write(spec)?;
        let mut all = vec!["-p".to_owned(), project.to_owned()];
        for f in &files.files {
            all.extend(["-f".to_owned(), f.to_string_lossy().into_owned()]);
        }
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run(&all, Some(&files.dir), spec.env, timeout).await
    }

    fn failed(&self, what: &str, out: Output) -> Error {
        Error::Failed {
            command: format!("{} {what}", self.command()),
            output: out.text.trim().to_owned(),
        }
    }

    /// Runs the CLI with `args` in `dir` and the variables `env`, killed
    /// after `timeout`.
    async fn run(
        &self,
        args: &[&str],
        dir: Option<&Path>,
        env: Option<&BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<Output, Error> {
        let command = format!("{} {}", self.command(), args.join(" "));
        let (program, pre) = self.program.split_first().ok_or_else(|| Error::Spawn {
            command: command.clone(),
            reason: "no program".into(),
        })?;
        let mut cmd = Command::new(program);
        // Compose interpolates `${NAME}` from its environment: it gets only
        // what it needs to run, never the relay's own variables, so a
        // compose file sees the secrets it was given and nothing else.
        // Secrets go as variables, not in an env file: compose's env-file
        // parser would cut a value at `#`, expand `$` and strip quotes.
        cmd.env_clear();
        for key in PASSED_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(env.into_iter().flatten());
        cmd.args(pre)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Plain output, whatever the terminal.
            .env("COMPOSE_ANSI", "never")
            .env("COMPOSE_PROGRESS", "plain")
            .env("DOCKER_HOST", &self.docker_host)
            .kill_on_drop(true);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| Error::Spawn {
            command: command.clone(),
            reason: e.to_string(),
        })?;
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let read = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (o, e) = tokio::join!(tail(stdout.as_mut(), &mut out), tail(stderr.as_mut(), &mut err));
            let status = child.wait().await;
            (o.and(e), status, out, err)
        };
        let (read, status, mut out, err) = tokio::time::timeout(timeout, read).await.map_err(|_| Error::TimedOut {
            command: command.clone(),
            after: timeout,
        })?;
        let status = status.and_then(|s| read.map(|()| s)).map_err(|e| Error::Spawn {
            command: command.clone(),
            reason: e.to_string(),
        })?;
        out.extend_from_slice(&err);
        let start = out.len().saturating_sub(MAX_OUTPUT);
        Ok(Output {
            ok: status.success(),
            text: String::from_utf8_lossy(&out[start..]).into_owned(),
        })
    }
}

/// Reads `from` to its end, keeping the last [`MAX_OUTPUT`] bytes in `into`.
async fn tail<R: tokio::io::AsyncRead + Unpin>(from: Option<&mut R>, into: &mut Vec<u8>) -> std::io::Result<()> {
    let Some(from) = from else { return Ok(()) };
    let mut buf = [0u8; 8192];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        into.extend_from_slice(&buf[..n]);
        if into.len() > 2 * MAX_OUTPUT {
            into.drain(..into.len() - MAX_OUTPUT);
        }
    }
}

/// What one compose run is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec<'a> {
    /// The compose file.
    pub yaml: &'a str,
    /// An override file laid over it (JSON, which compose reads as YAML):
    /// what a rollback uses to pin each service's image.
    pub pins: Option<&'a str>,
    /// Variables compose interpolates (`${NAME}`): the secrets.
    pub env: Option<&'a BTreeMap<String, String>>,
}

/// The files of one run on disk: 0600 in a directory of its own (so
/// relative paths in the compose file resolve there), all removed on
/// drop.
struct ComposeFile {
    dir: PathBuf,
    files: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl ComposeFile {
    fn write(spec: &Spec<'_>) -> Result<ComposeFile, Error> {
        if spec.yaml.len() > MAX_COMPOSE_FILE {
            return Err(Error::TooLarge {
                size: spec.yaml.len(),
                limit: MAX_COMPOSE_FILE,
            });
        }
        let spawn = |e: std::io::Error| Error::Spawn {
            command: "writing the compose file".into(),
            reason: e.to_string(),
        };
        let dir = tempfile::Builder::new()
            .prefix("routehub-compose-")
            .tempdir()
            .map_err(spawn)?;
        let write = |name: &str, text: &str| -> Result<PathBuf, Error> {
            let path = dir.path().join(name);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&path).map_err(spawn)?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(spawn)?;
            Ok(path)
        };
        let mut files = vec![write("compose.yaml", spec.yaml)?];
        if let Some(pins) = spec.pins {
            files.push(write("routehub-pins.yaml", pins)?);
        }
        Ok(ComposeFile {
            dir: dir.path().to_owned(),
            files,
            _dir: dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["web", "a", "0-app_1", &"a".repeat(MAX_NAME)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("Web", "start"),
            ("-web", "start"),
            ("we b", "only"),
            ("web.x", "only"),
            ("wéb", "only"),
            (&"a".repeat(MAX_NAME + 1), "longer"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(project("web", 3).unwrap(), "routehub_web_3");
    }

    #[tokio::test]
    async fn a_file_over_the_limit_is_refused_before_anything_runs() {
        let big = "x".repeat(MAX_COMPOSE_FILE + 1);
        let spec = Spec {
            yaml: &big,
            ..Spec::default()
        };
        assert!(matches!(ComposeFile::write(&spec), Err(Error::TooLarge { .. })));
    }

    #[tokio::test]
    async fn output_keeps_its_end() {
        let long = vec![b'a'; 3 * MAX_OUTPUT];
        let mut with_end = long.clone();
        with_end.extend_from_slice(b"the error");
        let mut into = Vec::new();
        tail(Some(&mut with_end.as_slice()), &mut into).await.unwrap();
        assert!(into.len() <= 2 * MAX_OUTPUT);
        assert!(into.ends_with(b"the error"));
    }
}
