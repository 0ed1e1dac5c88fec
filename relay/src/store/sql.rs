//! Small helpers every part of the store uses: SQLite errors as the
//! crate's error, JSON columns, timestamps.

use serde_json::Value;

use crate::error::Error;

/// The current time as stored (RFC 3339, UTC).
pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A SQLite error as the store's error.
pub(super) fn db(e: rusqlite::Error) -> Error {
    Error::Store(e.to_string())
}

/// `v` as a JSON column (`null` if it can't be serialised, which the
/// store's own types never fail).
pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) fn json_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
