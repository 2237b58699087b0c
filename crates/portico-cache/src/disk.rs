//! The disk tier: one file per object under `ROOT/XX/` (XX the id's first byte in hex),
//! written to `ROOT/tmp/` and renamed into place when complete, so a crash mid-write
//! leaves a temp file (removed at the next start), never a torn object under its name.
//! A file that fails its trailer check anyway (a torn write the OS reordered) is
//! deleted when read and counted as torn.
//!
//! The index (id → size and key, least recently used first) lives in memory and is
//! rebuilt at start by reading each file's head, in a background thread: objects
//! become visible as the scan reaches them. All file work runs on blocking threads.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderName;

use crate::object::{self, Object};

#[derive(Debug)]
struct Entry {
    size: u64,
    key: Arc<str>,
}

#[derive(Debug)]
struct Index {
    lru: lru::LruCache<u128, Entry>,
    bytes: u64,
    /// Keys whose responses vary: the header names, by key id.
    vary: HashMap<u128, Arc<[HeaderName]>>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            vary: HashMap::new(),
        }
    }
}

/// A bounded directory of objects.
#[derive(Debug)]
pub struct Disk {
    root: PathBuf,
    max: u64,
    index: Mutex<Index>,
    seq: AtomicU64,
    pub evictions: AtomicU64,
    pub torn: AtomicU64,
    pub write_errors: AtomicU64,
}

impl Disk {
    /// Opens (creating it) the tier at `root`, bounded to `max` bytes, and starts
    /// indexing what an earlier run left there.
    pub fn open(root: &Path, max: u64) -> std::io::Result<Arc<Self>> {
        fs::create_dir_all(root.join("tmp"))?;
        let disk = Arc::new(Self {
            root: root.to_path_buf(),
            max,
            index: Mutex::new(Index::default()),
            seq: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            torn: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        });
        let scanning = Arc::downgrade(&disk);
        std::thread::Builder::new()
            .name("portico-cache-scan".into())
            .spawn(move || scan(scanning))?;
        Ok(disk)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, id: u128) -> PathBuf {
        let hex = format!("{id:032x}");
        self.root.join(&hex[..2]).join(hex)
    }

    /// Bytes and objects on disk.
    pub fn usage(&self) -> (u64, u64) {
        let i = self.lock();
        (i.bytes, i.lru.len() as u64)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn contains(&self, id: u128) -> bool {
        self.lock().lru.contains(&id)
    }

    /// Marks `id` used (it moves to the back of the eviction order).
    pub fn touch(&self, id: u128) {
        self.lock().lru.promote(&id);
    }

    pub fn vary(&self, base: u128) -> Option<Arc<[HeaderName]>> {
        self.lock().vary.get(&base).cloned()
    }

    /// Writes `obj` as `id` (blocking), then evicts the least recently used objects
    /// while the tier is over its bound.
    pub fn store(&self, id: u128, base: u128, obj: &Object) {
        let file = obj.encode_file();
        let size = file.len() as u64;
        if size > self.max {
            return;
        }
        // the writer's pid first: during a binary upgrade two processes share the tier
        let tmp = self.root.join("tmp").join(format!(
            "{}-{id:032x}.{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let dest = self.path_of(id);
        let written = (|| {
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&file)?;
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %dest.display(), "cache: cannot write an object: {e}");
            return;
        }
        let names: Vec<HeaderName> = obj.meta.vary.iter().map(|(n, _)| n.clone()).collect();
        let evicted = {
            let mut i = self.lock();
            self.insert(&mut i, id, size, obj.meta.key.as_str().into());
            if names.is_empty() {
                i.vary.remove(&base);
            } else {
                i.vary.insert(base, names.into());
            }
            let mut out = Vec::new();
            while i.bytes > self.max {
                let Some((old, e)) = i.lru.pop_lru() else {
                    break;
                };
                i.bytes -= e.size;
                out.push(old);
            }
            out
        };
        for old in evicted {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(self.path_of(old));
        }
    }

    fn insert(&self, i: &mut Index, id: u128, size: u64, key: Arc<str>) {
        if let Some(old) = i.lru.put(id, Entry { size, key }) {
            i.bytes -= old.size;
        }
        i.bytes += size;
    }

    /// Reads `id` back (blocking); a torn file is deleted.
    pub fn load(&self, id: u128) -> Option<Object> {
        let path = self.path_of(id);
        let read = fs::read(&path);
        match read.map(|b| Object::decode_file(Bytes::from(b))) {
            Ok(Ok(obj)) => {
                self.touch(id);
                Some(obj)
            }
            Ok(Err(object::Torn)) => {
                self.torn.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), "cache: a torn object file: removed");
                self.remove(id);
                None
            }
            Err(_) => {
                self.forget(id);
                None
            }
        }
    }

    fn forget(&self, id: u128) -> bool {
        let mut i = self.lock();
        match i.lru.pop(&id) {
            Some(e) => {
                i.bytes -= e.size;
                true
            }
            None => false,
        }
    }

    /// Removes `id` (blocking); true when it was there.
    pub fn remove(&self, id: u128) -> bool {
        let was = self.forget(id);
        let _ = fs::remove_file(self.path_of(id));
        was
    }

    /// The ids of objects whose key `pred` accepts.
    pub fn ids_where(&self, pred: impl Fn(&str) -> bool) -> Vec<u128> {
        let i = self.lock();
        i.lru
            .iter()
            .filter(|(_, e)| pred(&e.key))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn drop_vary(&self, base: u128) {
        self.lock().vary.remove(&base);
    }
}

/// Whether a temp file (`PID-ID.SEQ`) is being written by a process that runs — this
/// one (a store racing the scan at start) or the old process of a binary upgrade,
/// draining — rather than left by a crash.
fn written_by_a_live_process(name: &str) -> bool {
    let Some(pid) = name
        .split_once('-')
        .and_then(|(p, _)| p.parse::<u32>().ok())
    else {
        return false;
    };
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Indexes the files an earlier run left; removes temp files (but those a live process
/// is writing) and anything unreadable.
fn scan(disk: std::sync::Weak<Disk>) {
    let Some(root) = disk.upgrade().map(|d| d.root.clone()) else {
        return;
    };
    if let Ok(tmp) = fs::read_dir(root.join("tmp")) {
        for e in tmp.flatten() {
            if !written_by_a_live_process(&e.file_name().to_string_lossy()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let Ok(dirs) = fs::read_dir(&root) else {
        return;
    };
    let mut found = 0u64;
    for dir in dirs.flatten() {
        let name = dir.file_name();
        if name.len() != 2 || !dir.path().is_dir() {
            continue;
        }
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let Some(d) = disk.upgrade() else {
                return;
            };
            let path = f.path();
            let id = f
                .file_name()
                .to_str()
                .filter(|n| n.len() == 32)
                .and_then(|n| u128::from_str_radix(n, 16).ok());
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            match id.and_then(|id| read_head(&path).map(|m| (id, m))) {
                Some((id, meta)) => {
                    let mut i = d.lock();
                    if i.lru.contains(&id) {
                        continue; // written by this run while the scan went on
                    }
                    if !meta.vary.is_empty() {
                        let names: Vec<HeaderName> =
                            meta.vary.iter().map(|(n, _)| n.clone()).collect();
                        i.vary.insert(crate::key_id(&meta.key), names.into());
                    }
                    d.insert(&mut i, id, size, meta.key.as_str().into());
                    found += 1;
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    if let Some(d) = disk.upgrade() {
        let (bytes, _) = d.usage();
        tracing::info!(path = %root.display(), objects = found, bytes, "cache: disk tier indexed");
    }
}

fn read_head(path: &Path) -> Option<object::Meta> {
    let mut f = fs::File::open(path).ok()?;
    let mut first = vec![0; object::HEAD_PREFIX];
    f.read_exact(&mut first).ok()?;
    let n = object::head_len(&first).ok()?;
    first.resize(object::HEAD_PREFIX + n, 0);
    f.read_exact(&mut first[object::HEAD_PREFIX..]).ok()?;
    object::head(&first).ok().map(|(_, m)| m)
}
