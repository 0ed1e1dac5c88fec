//! Files and directories with the modes they need, whatever the umask, and
//! crash-safe writes: a reader sees the old file or the new one, never half
//! of either, even if the disk fills or the process dies.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest config file read: configs are a few KiB, and a huge file is a
/// mistake (or hostile), not a config.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Who may read a file written by [`write_atomic`]. The mode is set
/// explicitly, so a permissive umask (0002, common on shared hosts) never
/// widens it and a strict one never hides a file users must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Owner only (0600): private keys, tokens, credentials, state.
    Private,
    /// Anyone may read, only the owner writes (0644): certificates users
    /// hand to other programs (`curl --cacert`), lists of public keys.
    Public,
}

impl Access {
    /// The Unix permission bits of a file with this access.
    pub const fn mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Public => 0o644,
        }
    }
}

/// Writes `bytes` to `path` via a temporary file in the same directory,
/// fsynced and renamed over the target, with the mode of `access`. On
/// error the target is unchanged and no temporary file is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Created private, so the content is never readable by others
            // even for a moment; widened below if it is public.
            opts.mode(Access::Private.mode());
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // The umask masked the mode given at creation; set it exactly.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(access.mode()))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::file(path))
}

/// Creates `dir` (and missing parents) with mode 0700. A directory that
/// already exists keeps its mode: it may be shared on purpose.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        // The umask can only remove bits, so 0700 stays 0700 under any
        // umask that leaves the owner its own directory.
        b.mode(0o700);
    }
    b.create(dir).map_err(Error::file(dir))
}

/// Reads at most `limit` bytes of UTF-8 text from `path`; a longer file is
/// an error, so a wrong path (a log, a device) can't exhaust memory.
pub fn read_bounded(path: &Path, limit: u64) -> Result<String> {
    let file = std::fs::File::open(path).map_err(Error::file(path))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(Error::file(path))?;
    if text.len() as u64 > limit {
        return Err(Error::Config {
            path: path.to_owned(),
            message: format!("larger than {limit} bytes"),
        });
    }
    Ok(text)
}

/// Reads a TOML file into `T` (whose serde settings reject unknown keys);
/// errors name the file and, for bad TOML, the line.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_bounded(path, MAX_CONFIG_FILE)?;
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Where a role (`gateway`, `relay`, `demo`) keeps its state when no data
/// dir is given: `$XDG_DATA_HOME/routehub/<role>`, else
/// `~/.local/share/routehub/<role>`, else `./routehub-<role>`.
pub fn default_data_dir(role: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| Path::new(&h).join(".local/share"))
        });
    match base {
        Some(base) => base.join("routehub").join(role),
        None => PathBuf::from(format!("routehub-{role}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", Access::Private).unwrap();
        write_atomic(&p, b"two", Access::Private).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("x");
        assert!(write_atomic(&p, b"x", Access::Public).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Set by the parent of [`modes_do_not_follow_a_permissive_umask`] in
    /// the child it runs under `umask 002`.
    const UMASK_CHILD: &str = "ROUTEHUB_OPS_UMASK_CHILD";

    /// The umask is process-wide, so the checks run in a child process of
    /// this test binary started under `umask 002` (group-writable files),
    /// where they can't disturb the other tests.
    #[cfg(unix)]
    #[test]
    fn modes_do_not_follow_a_permissive_umask() {
        if std::env::var_os(UMASK_CHILD).is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("umask 002 && exec \"$0\" \"$@\"")
                .arg(exe)
                .args([
                    "--exact",
                    "fs::tests::modes_do_not_follow_a_permissive_umask",
                    "--nocapture",
                ])
                .env(UMASK_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
            assert!(stdout.contains("1 passed"), "the child ran the checks: {stdout}");
            return;
        }
        // In the child: prove the umask really is permissive here.
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        assert_eq!(mode(&probe), 0o664, "umask 002 is in effect");

        let data = dir.path().join("a").join("data");
        ensure_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let key = data.join("key.pem");
        write_atomic(&key, b"k", Access::Private).unwrap();
        assert_eq!(mode(&key), 0o600);
        let cert = data.join("ca.pem");
        write_atomic(&cert, b"c", Access::Public).unwrap();
        assert_eq!(mode(&cert), 0o644);
    }

    #[test]
    fn oversized_config_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.toml");
        std::fs::write(&p, "# x\n".repeat(300_000)).unwrap();
        let err = read_toml::<toml::Table>(&p).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        std::fs::write(&p, "a = 1\nb = [").unwrap();
        let err = read_toml::<toml::Table>(&p).unwrap_err().to_string();
        assert!(err.contains("big.toml") && err.contains("line 2"), "{err}");
    }
}
