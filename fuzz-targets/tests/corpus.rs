//! Replays every saved fuzz input through its target on the stable
//! toolchain: the corpus the fuzzer built (`fuzz/corpus/<target>/`) and
//! every input that once failed (`fuzz/regressions/<target>/`).

use std::path::{Path, PathBuf};

use routehub_fuzz::{TARGETS, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files of `dir/<target>/`, with their target, for every target directory.
fn inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(targets) = std::fs::read_dir(dir) else {
        return found;
    };
    for t in targets {
        let t = t.expect("a readable directory entry").path();
        let name = t.file_name().and_then(|n| n.to_str()).expect("a UTF-8 name").to_owned();
        if !t.is_dir() {
            continue;
        }
        assert!(target(&name).is_some(), "{} names no fuzz target", t.display());
        for f in std::fs::read_dir(&t).expect("a readable target directory") {
            let f = f.expect("a readable directory entry").path();
            if f.is_file() {
                found.push((name.clone(), f));
            }
        }
    }
    found.sort();
    found
}

/// Runs each input, collecting every failure rather than stopping at the
/// first, so one run names them all.
fn replay(inputs: &[(String, PathBuf)]) {
    let mut failed = Vec::new();
    for (name, path) in inputs {
        let data = std::fs::read(path).expect("a readable input");
        let run = target(name).expect("a known target").run;
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn every_corpus_input_passes() {
    let corpus = inputs(&fuzz_dir().join("corpus"));
    for t in TARGETS {
        assert!(
            corpus.iter().any(|(name, _)| name == t.name),
            "fuzz target {} has no saved corpus",
            t.name
        );
    }
    replay(&corpus);
}

#[test]
fn every_regression_input_passes() {
    replay(&inputs(&fuzz_dir().join("regressions")));
}

/// The cargo-fuzz project runs exactly these targets.
#[test]
fn every_target_has_a_fuzz_binary() {
    for t in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{}.rs", t.name));
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            source.contains(&format!("routehub_fuzz::{}", t.name)) || source.contains(&format!("\"{}\"", t.name)),
            "{} does not run its target",
            path.display()
        );
    }
}
