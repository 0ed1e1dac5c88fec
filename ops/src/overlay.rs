//! Command-line flags laid over a TOML config file, by one rule for every
//! setting of every role: a flag is the file's key of the same name, and a
//! flag that is given wins.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::error::{Error, Result};
use crate::fs::{MAX_CONFIG_FILE, read_bounded};

/// Loads a `T` from the TOML `file` (or, without one, from `T`'s serde
/// defaults) with `flags` laid over it.
///
/// `flags` serialises to the file's keys: field names (or serde renames)
/// are the keys, a nested struct is a section. A flag that was not given
/// is absent: `None`, an empty list or an empty section. A given flag
/// replaces the file's value, key by key inside sections; a list replaces
/// the file's list, except under the top-level keys in `extend`, whose
/// lists the flags' entries are appended to (entries that each add
/// something, like `[[route]]`).
///
/// The file must be a valid `T` on its own, so its mistakes are reported
/// with their line; what goes wrong only once the flags are laid over is
/// reported as the flags'. Unknown keys are refused if `T` refuses them.
pub fn load<T: DeserializeOwned>(file: Option<&Path>, flags: &impl Serialize, extend: &[&str]) -> Result<T> {
    let mut table = match file {
        Some(path) => {
            let text = read_bounded(path, MAX_CONFIG_FILE)?;
            let bad = |e: toml::de::Error| Error::Config {
                path: path.to_owned(),
                message: e.to_string(),
            };
            toml::from_str::<T>(&text).map_err(bad)?;
            toml::from_str::<Table>(&text).map_err(bad)?
        }
        None => Table::new(),
    };
    let flag_error = |message: String| Error::Config {
        path: file.map_or_else(|| PathBuf::from("<command line>"), Path::to_owned),
        message,
    };
    let mut given = Table::try_from(flags).map_err(|e| flag_error(format!("command-line flags: {e}")))?;
    prune(&mut given);
    lay_over(&mut table, given, extend);
    table
        .try_into()
        .map_err(|e| flag_error(format!("with the command-line flags: {e}")))
}

/// Drops what a flag that was not given serialises to: empty lists and
/// sections (a `None` serialises to nothing at all).
fn prune(table: &mut Table) {
    table.retain(|_, v| match v {
        Value::Table(t) => {
            prune(t);
            !t.is_empty()
        }
        Value::Array(a) => !a.is_empty(),
        _ => true,
    });
}

fn lay_over(base: &mut Table, flags: Table, extend: &[&str]) {
    for (key, value) in flags {
        let replacement = match (base.get_mut(&key), value) {
            (Some(Value::Table(section)), Value::Table(given)) => {
                lay_over(section, given, &[]);
                None
            }
            (Some(Value::Array(list)), Value::Array(given)) if extend.contains(&key.as_str()) => {
                list.extend(given);
                None
            }
            (_, given) => Some(given),
        };
        if let Some(v) = replacement {
            base.insert(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Config {
        listen: String,
        names: Vec<String>,
        drain_timeout_secs: u64,
        #[serde(rename = "route")]
        routes: Vec<Route>,
        section: Option<Section>,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                listen: "0.0.0.0:443".into(),
                names: vec!["localhost".into()],
                drain_timeout_secs: 10,
                routes: Vec::new(),
                section: None,
            }
        }
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Route {
        host: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Section {
        url: String,
        #[serde(default)]
        email: Option<String>,
        #[serde(default = "ten")]
        per_hour: u32,
    }

    fn ten() -> u32 {
        10
    }

    #[derive(Default, Serialize)]
    struct Flags {
        listen: Option<String>,
        names: Vec<String>,
        #[serde(rename = "drain_timeout_secs")]
        drain_timeout: Option<u64>,
        #[serde(rename = "route")]
        routes: Vec<Route>,
        section: SectionFlags,
    }

    #[derive(Default, Serialize)]
    struct SectionFlags {
        url: Option<String>,
        email: Option<String>,
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn route(host: &str) -> Route {
        Route { host: host.into() }
    }

    #[test]
    fn no_file_and_no_flags_is_the_default() {
        let c: Config = load(None, &Flags::default(), &["route"]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn given_flags_win_key_by_key_and_absent_ones_keep_the_file() {
        let (_d, path) = file(
            "listen = \"127.0.0.1:1\"\nnames = [\"a.test\", \"b.test\"]\ndrain_timeout_secs = 3\n\
             [section]\nurl = \"https://ca\"\nemail = \"a@b\"\n[[route]]\nhost = \"one.test\"\n",
        );
        let c: Config = load(Some(&path), &Flags::default(), &["route"]).unwrap();
        assert_eq!(c.names, ["a.test", "b.test"]);
        assert_eq!(c.section.as_ref().unwrap().email.as_deref(), Some("a@b"));

        let flags = Flags {
            listen: Some("127.0.0.1:2".into()),
            names: vec!["c.test".into()],
            routes: vec![route("two.test")],
            section: SectionFlags {
                email: Some("c@d".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let c: Config = load(Some(&path), &flags, &["route"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.names, ["c.test"], "a list flag replaces the file's list");
        assert_eq!(c.drain_timeout_secs, 3, "a flag not given keeps the file's value");
        assert_eq!(c.routes, [route("one.test"), route("two.test")], "entries are added");
        let s = c.section.unwrap();
        assert_eq!(
            (s.url.as_str(), s.email.as_deref(), s.per_hour),
            ("https://ca", Some("c@d"), 10)
        );
    }

    #[test]
    fn a_section_made_by_flags_alone_gets_its_defaults() {
        let flags = Flags {
            drain_timeout: Some(5),
            section: SectionFlags {
                url: Some("https://ca".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let c: Config = load(None, &flags, &[]).unwrap();
        assert_eq!(c.drain_timeout_secs, 5);
        assert_eq!(c.section.unwrap().per_hour, 10);
        // Without the section's required key the flags are at fault.
        let flags = Flags {
            section: SectionFlags {
                email: Some("a@b".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = load::<Config>(None, &flags, &[]).unwrap_err().to_string();
        assert!(err.contains("<command line>") && err.contains("url"), "{err}");
    }

    #[test]
    fn the_file_must_be_valid_alone_and_its_errors_name_the_line() {
        let (_d, path) = file("listen = \"x\"\nlisten_typo = 1\n");
        let err = load::<Config>(Some(&path), &Flags::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.toml") && err.contains("line 2") && err.contains("listen_typo"),
            "{err}"
        );
        // A section the file leaves incomplete is the file's error, even if
        // a flag would complete it.
        let (_d, path) = file("[section]\nemail = \"a@b\"\n");
        let flags = Flags {
            section: SectionFlags {
                url: Some("https://ca".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(load::<Config>(Some(&path), &flags, &[]).is_err());
        let err = load::<Config>(Some(Path::new("/nonexistent/routehub.toml")), &flags, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/routehub.toml"), "{err}");
    }

    #[test]
    fn a_value_toml_cannot_hold_is_a_flag_error() {
        let flags = Flags {
            drain_timeout: Some(u64::MAX),
            ..Default::default()
        };
        let err = load::<Config>(None, &flags, &[]).unwrap_err().to_string();
        assert!(err.contains("command-line flags"), "{err}");
    }
}
