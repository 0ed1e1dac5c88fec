//! The change journal: a second, append-only copy of every change the
//! store acknowledges, written and fsynced after the SQLite commit and
//! before the answer. With the backup it continues (see `backup`), it
//! rebuilds the store when `relay.db` is damaged; at start it tells a
//! store that silently lost acknowledged changes (a damaged write-ahead
//! log) from a whole one.
//!
//! Format: a header of 16 bytes (`RHJRNL01`, then the version of the
//! backup the journal continues, u64 big-endian), then records, each the
//! payload's length (u32 big-endian), the SHA-256 of the payload (32
//! bytes) and the payload (the JSON of one [`Entry`]). A record cut short
//! by a crash, or damaged later, fails its length or checksum: reading
//! stops there and says where and why ([`Tail`]), never guessing at what
//! follows.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Change;

/// First bytes of every journal.
pub const MAGIC: &[u8; 8] = b"RHJRNL01";
/// Magic and base version.
pub const HEADER_LEN: u64 = 16;
/// Length and checksum before each payload.
const FRAME_LEN: usize = 4 + 32;
/// Largest payload read or written. A rollback carries the whole route set
/// twice; a change bigger than this is covered by a backup instead.
pub const MAX_RECORD: usize = 64 * 1024 * 1024;
/// Largest journal read. The store backs up and empties the journal long
/// before (see `ROTATE_BYTES` in the store); a bigger file is not one the
/// store wrote, and reading it could exhaust memory.
pub const MAX_JOURNAL: u64 = 256 * 1024 * 1024;

/// One record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// A committed change, as the change log holds it.
    Change(Change),
    /// A seed route recorded as applied.
    Seed(Seed),
    /// A compose version written, with the compose as it is after.
    ComposeVersion(Box<super::composes::VersionRecord>),
    /// A deployment as it is after a write.
    Deployment(Box<crate::records::Deployment>),
    /// A compose removed, with its versions and deployments.
    ComposeRemoved(String),
}

/// A seed (`--route` flag, `[[route]]`) the store recorded as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub host: String,
    pub path: String,
    pub target: String,
}

/// Where a journal stops being readable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Offset of the first byte that is not part of a whole record.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub bytes: u64,
    pub reason: String,
}

impl std::fmt::Display for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the last {} byte(s), from offset {}, are not a whole record ({})",
            self.bytes, self.offset, self.reason
        )
    }
}

/// What a journal file holds.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The backup version it continues; `None` for an empty file (a crash
    /// while it was being emptied).
    pub base: Option<u64>,
    /// Every whole record, in file order.
    pub entries: Vec<Entry>,
    /// End of the last whole record.
    pub end: u64,
    /// What follows it, if anything.
    pub tail: Option<Tail>,
}

impl Scan {
    /// The changes it holds.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Change(c) => Some(c),
            _ => None,
        })
    }

    /// The newest change version it holds.
    pub fn last_version(&self) -> Option<u64> {
        self.changes().map(|c| c.version).max()
    }
}

fn checksum(payload: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, payload)
}

/// `entry` framed: length, checksum, payload.
fn frame(entry: &Entry) -> std::io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    if payload.len() > MAX_RECORD {
        return Err(std::io::Error::other(format!(
            "a journal record of {} bytes is over the {MAX_RECORD}-byte limit",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(FRAME_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(checksum(&payload).as_ref());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn header(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&base.to_be_bytes());
    h
}

/// Reads the journal at `path` (`None`: there is none). Whole records come
/// back; the first damaged or cut-short one ends the scan and is reported
/// in [`Scan::tail`]. A file that is not a journal at all is
/// [`Error::Damaged`].
pub fn scan(path: &Path) -> Result<Option<Scan>> {
    let io = |e: std::io::Error| Error::Store(format!("{}: {e}", path.display()));
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let damaged = |problem: String| Error::Damaged {
        path: path.to_owned(),
        problem,
    };
    if len > MAX_JOURNAL {
        return Err(damaged(format!(
            "is {len} bytes, over the {MAX_JOURNAL} a store ever writes"
        )));
    }
    let mut scan = Scan::default();
    if len == 0 {
        return Ok(Some(scan));
    }
    let mut r = std::io::BufReader::new(file);
    if len < HEADER_LEN {
        scan.tail = Some(Tail {
            offset: 0,
            bytes: len,
            reason: "the header is cut short".into(),
        });
        return Ok(Some(scan));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut h).map_err(io)?;
    if &h[..8] != MAGIC {
        return Err(damaged("is not a Routehub change journal (wrong magic)".into()));
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&h[8..]);
    scan.base = Some(u64::from_be_bytes(base));
    let mut pos = HEADER_LEN;
    let stop = |pos: u64, reason: String| {
        Some(Tail {
            offset: pos,
            bytes: len - pos,
            reason,
        })
    };
    while pos < len {
        let left = len - pos;
        if left < FRAME_LEN as u64 {
            scan.tail = stop(pos, "a record header cut short".into());
            break;
        }
        let mut f = [0u8; FRAME_LEN];
        r.read_exact(&mut f).map_err(io)?;
        let size = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as u64;
        if size > MAX_RECORD as u64 {
            scan.tail = stop(pos, format!("a record length of {size} bytes, over the limit"));
            break;
        }
        if size > left - FRAME_LEN as u64 {
            scan.tail = stop(
                pos,
                format!(
                    "a record of {size} bytes cut short at {} bytes",
                    left - FRAME_LEN as u64
                ),
            );
            break;
        }
        // Bounded by MAX_RECORD and by what the file holds.
        let mut payload = vec![0u8; size as usize];
        r.read_exact(&mut payload).map_err(io)?;
        if checksum(&payload).as_ref() != &f[4..] {
            scan.tail = stop(pos, "a record whose checksum does not match".into());
            break;
        }
        match serde_json::from_slice::<Entry>(&payload) {
            Ok(entry) => scan.entries.push(entry),
            Err(e) => {
                scan.tail = stop(pos, format!("a whole record this build can't read: {e}"));
                break;
            }
        }
        pos += FRAME_LEN as u64 + size;
        scan.end = pos;
    }
    if scan.end == 0 {
        scan.end = HEADER_LEN;
    }
    Ok(Some(scan))
}

/// Holds `file`'s advisory lock until dropped, so two handles of a store
/// (or a stray second process) never interleave an append and an emptying.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(file: &'a File) -> std::io::Result<Self> {
        file.lock()?;
        Ok(Locked(file))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The journal, open for appending.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Records and bytes appended since it was last emptied (by this handle).
    records: u64,
    bytes: u64,
}

impl Journal {
    /// An empty journal continuing the backup at version `base`, replacing
    /// whatever `path` held.
    pub fn create(path: &Path, base: u64) -> std::io::Result<Journal> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(path)?;
        let mut journal = Journal {
            file,
            path: path.to_owned(),
            records: 0,
            bytes: 0,
        };
        journal.reset(base)?;
        if let Some(dir) = path.parent() {
            super::files::sync_dir(dir);
        }
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entries` and waits until they are on disk. On an error
    /// nothing of them stays (the file is cut back to where it was).
    pub fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in entries {
            buf.extend_from_slice(&frame(e)?);
        }
        let _lock = Locked::new(&self.file)?;
        let before = self.file.metadata()?.len();
        let written = (&self.file).write_all(&buf).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(before);
            let _ = self.file.sync_data();
            return Err(e);
        }
        self.records += entries.len() as u64;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Empties the journal: a backup at version `base` now holds
    /// everything it had.
    pub fn reset(&mut self, base: u64) -> std::io::Result<()> {
        let _lock = Locked::new(&self.file)?;
        self.file.set_len(0)?;
        // Appending: the header lands at offset 0 of the emptied file.
        (&self.file).write_all(&header(base))?;
        self.file.sync_all()?;
        self.records = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Records appended since the journal was last emptied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes appended since the journal was last emptied.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChangeAction;

    fn change(version: u64) -> Entry {
        Entry::Change(Change {
            version,
            at: "2026-01-01T00:00:00Z".into(),
            actor: "t".into(),
            action: ChangeAction::Add,
            route_id: Some(version),
            before: serde_json::Value::Null,
            after: serde_json::json!({ "host": format!("h{version}.test") }),
            checksum: format!("{version:064x}"),
        })
    }

    fn written(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.journal");
        let mut j = Journal::create(&path, 7).unwrap();
        for v in 8..8 + n {
            j.append(&[change(v)]).unwrap();
        }
        assert_eq!(j.records(), n);
        (dir, path)
    }

    fn versions(scan: &Scan) -> Vec<u64> {
        scan.changes().map(|c| c.version).collect()
    }

    #[test]
    fn whole_records_read_back_in_order_with_their_base() {
        let (_dir, path) = written(3);
        let scan = scan(&path).unwrap().unwrap();
        assert_eq!(scan.base, Some(7));
        assert_eq!(versions(&scan), [8, 9, 10]);
        assert_eq!(scan.tail, None);
        assert_eq!(scan.end, std::fs::metadata(&path).unwrap().len());
        assert_eq!(scan.entries[0], change(8));
        assert!(super::scan(&path.with_extension("none")).unwrap().is_none());
    }

    #[test]
    fn a_torn_tail_is_detected_and_reported_never_misread() {
        let (_dir, path) = written(3);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the fourth append: half of it is there.
        let fourth = frame(&change(11)).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&fourth[..fourth.len() / 2]).unwrap();
        let scan = scan(&path).unwrap().unwrap();
        assert_eq!(versions(&scan), [8, 9, 10], "the whole records");
        let tail = scan.tail.expect("the torn tail is reported");
        assert_eq!((tail.offset, tail.bytes), (whole, (fourth.len() / 2) as u64));
        assert!(tail.reason.contains("cut short"), "{tail}");
        assert_eq!(scan.end, whole);

        // Only the frame header of the fourth.
        f.set_len(whole + 10).unwrap();
        let tail = super::scan(&path).unwrap().unwrap().tail.unwrap();
        assert!(tail.reason.contains("header cut short"), "{tail}");
    }

    #[test]
    fn a_damaged_record_ends_the_scan_where_it_starts() {
        let (_dir, path) = written(3);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_LEN as usize + frame(&change(8)).unwrap().len();
        // One flipped bit inside the second record's payload.
        bytes[second + FRAME_LEN + 5] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan(&path).unwrap().unwrap();
        assert_eq!(versions(&scan), [8]);
        let tail = scan.tail.unwrap();
        assert_eq!(tail.offset, second as u64);
        assert!(tail.reason.contains("checksum"), "{tail}");
    }

    #[test]
    fn a_hostile_length_is_a_tail_not_an_allocation() {
        let (_dir, path) = written(1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut bogus = u32::MAX.to_be_bytes().to_vec();
        bogus.extend_from_slice(&[0u8; 32]);
        bogus.extend_from_slice(b"{}");
        f.write_all(&bogus).unwrap();
        let tail = scan(&path).unwrap().unwrap().tail.unwrap();
        assert!(tail.reason.contains("over the limit"), "{tail}");
        // Under the limit but past the end of the file.
        let at = std::fs::metadata(&path).unwrap().len() - bogus.len() as u64;
        f.set_len(at).unwrap();
        let mut short = 1000u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0u8; 40]);
        f.write_all(&short).unwrap();
        let tail = scan(&path).unwrap().unwrap().tail.unwrap();
        assert!(tail.reason.contains("cut short at 8 bytes"), "{tail}");
    }

    #[test]
    fn headers_cut_short_foreign_files_and_emptied_journals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.journal");
        std::fs::write(&path, b"").unwrap();
        let scan = scan(&path).unwrap().unwrap();
        assert_eq!((scan.base, scan.entries.len(), scan.tail), (None, 0, None));
        std::fs::write(&path, &MAGIC[..5]).unwrap();
        let tail = super::scan(&path).unwrap().unwrap().tail.unwrap();
        assert!(tail.reason.contains("header"), "{tail}");
        std::fs::write(&path, b"SQLite format 3\0 and more").unwrap();
        let err = super::scan(&path).unwrap_err();
        assert!(matches!(err, Error::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("not a Routehub change journal"), "{err}");
    }

    #[test]
    fn reset_empties_it_and_records_the_new_base() {
        let (_dir, path) = written(3);
        let mut j = Journal::create(&path, 10).unwrap();
        j.append(&[change(11)]).unwrap();
        let scan = scan(&path).unwrap().unwrap();
        assert_eq!((scan.base, versions(&scan)), (Some(10), vec![11]));
        j.reset(11).unwrap();
        let scan = super::scan(&path).unwrap().unwrap();
        assert_eq!((scan.base, versions(&scan)), (Some(11), vec![]));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN);
    }
}
