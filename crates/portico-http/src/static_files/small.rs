//! Small files kept in memory, one table per worker thread (as h2o's file cache, and
//! nginx's `open_file_cache` for metadata): a hit costs one `stat` instead of
//! stat + open + read + close, and no allocation for the validators. The entry is
//! checked against the file's metadata on every request (size, modification time to
//! the nanosecond, inode and device), so a changed or replaced file is served new at
//! once — never a stale copy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::HeaderValue;

/// Files up to this size are kept.
pub const MAX_FILE: u64 = 64 * 1024;
/// Bounds per worker thread; past either the table starts over (hot files come back
/// on their next request).
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// A file as it was read, with the validators made from its metadata.
#[derive(Clone)]
pub struct File {
    pub data: Bytes,
    /// `"mtime-size"` in hex, as nginx writes it.
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    /// The modification time in seconds (If-Modified-Since compares these).
    pub secs: u64,
    stamp: Stamp,
}

/// What identifies one version of a file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: i64,
    mtime_ns: i64,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Default)]
struct Table {
    /// Keyed by the path's bytes (`Path`'s own `Hash` walks its components), hashed by
    /// foldhash, seeded per process, not SipHash: the keys are the paths of files that
    /// exist (and at most MAX_ENTRIES of them), and the lookup is on every request
    files: HashMap<Box<[u8]>, File, foldhash::fast::RandomState>,
    bytes: usize,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// The validators for a file with `meta` (also for files too big to keep).
pub fn validators(meta: &std::fs::Metadata) -> (String, u64, String) {
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let secs = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let etag = format!("\"{secs:x}-{:x}\"", meta.len());
    (etag, secs, httpdate::fmt_http_date(mtime))
}

/// The kept copy of `path` if it still matches `meta`, else the file read now (and
/// kept). `None` for files over [`MAX_FILE`] (the caller streams those).
pub fn get(path: &Path, meta: &std::fs::Metadata) -> Option<std::io::Result<File>> {
    if meta.len() > MAX_FILE {
        return None;
    }
    let stamp = Stamp::of(meta);
    let kept = TABLE.with(|t| {
        t.borrow()
            .files
            .get(path.as_os_str().as_encoded_bytes())
            .filter(|f| f.stamp == stamp)
            .cloned()
    });
    if let Some(f) = kept {
        return Some(Ok(f));
    }
    Some(read(path, meta, stamp))
}

fn read(path: &Path, meta: &std::fs::Metadata, stamp: Stamp) -> std::io::Result<File> {
    let data = std::fs::read(path)?;
    let (etag, secs, last_modified) = validators(meta);
    let file = File {
        etag: HeaderValue::from_str(&etag).map_err(std::io::Error::other)?,
        last_modified: HeaderValue::from_str(&last_modified).map_err(std::io::Error::other)?,
        secs,
        // read between the stat and now: what was read is kept only if it is as long as
        // the stat said (a file being rewritten is served as read, and read again next time)
        stamp: if data.len() as u64 == stamp.len {
            stamp
        } else {
            Stamp {
                len: u64::MAX,
                ..stamp
            }
        },
        data: Bytes::from(data),
    };
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if t.files.len() >= MAX_ENTRIES || t.bytes + file.data.len() > MAX_BYTES {
            t.files.clear();
            t.bytes = 0;
        }
        t.bytes += file.data.len();
        if let Some(old) = t
            .files
            .insert(path.as_os_str().as_encoded_bytes().into(), file.clone())
        {
            t.bytes -= old.data.len();
        }
    });
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_read_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, b"one").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let first = get(&p, &meta).unwrap().unwrap();
        assert_eq!(&first.data[..], b"one");
        // the same version: the kept bytes (the same buffer)
        let again = get(&p, &std::fs::metadata(&p).unwrap()).unwrap().unwrap();
        assert_eq!(again.data.as_ptr(), first.data.as_ptr());
        // same length, new content: a new mtime (or inode) makes it read again
        let tmp = dir.path().join("b.txt");
        std::fs::write(&tmp, b"two").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(&get(&p, &meta).unwrap().unwrap().data[..], b"two");
        // too big to keep: the caller streams it
        std::fs::write(&p, vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        assert!(get(&p, &std::fs::metadata(&p).unwrap()).is_none());
    }
}
