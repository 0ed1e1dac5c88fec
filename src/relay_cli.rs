//! `routehub relay recover`: rebuilds a stopped relay's damaged store.

use std::path::Path;

use anyhow::{Context, Result};

/// Checks the store in `data_dir` and, if it is damaged, rebuilds it from
/// its backup and journal; prints what was found and restored.
pub fn recover(data_dir: &Path) -> Result<()> {
    let db = data_dir.join(relay::STORE_FILE);
    let report = relay::store::recover(&db).with_context(|| format!("recovering {}", db.display()))?;
    print!("{report}");
    Ok(())
}
