//! Fuzz targets for every Routehub parser that reads hostile input: one
//! `pub fn name(data: &[u8])` per target, calling the real parser and
//! asserting what must hold for every input (besides not panicking):
//! `decode(encode(x)) == x` where there is an encoder, a parsed value
//! re-parses to itself from its printed form, a normalised value is a
//! fixed point of its normaliser, a state machine never grants what was not
//! proven. Invariants are what let a fuzzer find logic bugs, not just
//! panics.
//!
//! `fuzz/` (a cargo-fuzz project, nightly only) runs these functions under
//! libFuzzer; the test in `tests/corpus.rs` replays every saved corpus and
//! regression input through them on stable, as part of the normal suite.
//! Structure-aware targets read their input through [`arbitrary`], so the
//! same bytes always mean the same case.

pub mod config;
pub mod frame;
pub mod handshake;
pub mod identity;
mod input;
pub mod jws;
pub mod keys;
pub mod labels;
pub mod names;
pub mod paths;
pub mod routes;

pub use config::{gateway_config, relay_config, relay_route};
pub use frame::frame;
pub use handshake::handshake;
pub use identity::identity;
pub use jws::jws;
pub use keys::{authorized_keys, user_key};
pub use labels::labels;
pub use names::host_pattern;
pub use paths::request_path;
pub use routes::{route_spec, route_sync};

/// One fuzz target: the name of its cargo-fuzz target (and of its corpus
/// and regression directories) and the function it runs.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order the fuzz scripts run them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: frame,
    },
    Target {
        name: "handshake",
        run: handshake,
    },
    Target {
        name: "host_pattern",
        run: host_pattern,
    },
    Target {
        name: "request_path",
        run: request_path,
    },
    Target {
        name: "route_spec",
        run: route_spec,
    },
    Target {
        name: "route_sync",
        run: route_sync,
    },
    Target {
        name: "authorized_keys",
        run: authorized_keys,
    },
    Target {
        name: "user_key",
        run: user_key,
    },
    Target { name: "jws", run: jws },
    Target {
        name: "identity",
        run: identity,
    },
    Target {
        name: "gateway_config",
        run: gateway_config,
    },
    Target {
        name: "relay_config",
        run: relay_config,
    },
    Target {
        name: "relay_route",
        run: relay_route,
    },
    Target {
        name: "labels",
        run: labels,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Input as text, the way a file or a flag reaches a parser (invalid UTF-8
/// replaced, as the parsers never see it: reading the file fails first).
pub(crate) fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
