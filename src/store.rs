//! Cache files: safetensors whose header holds string fields (what the data was computed
//! from) and a SHA-256 per tensor. Written through a temporary file, so a crash or a concurrent
//! reader never sees half a file; read back with every field and checksum checked, so a file
//! that is unreadable, truncated, flipped or written for another key is reported (naming the
//! file and what did not match) and rebuilt, never trusted.

use crate::error::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What happened to a cache file on a lookup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Outcome {
    /// A valid file was there.
    Reused,
    /// No file was there; computed and written.
    Computed,
    /// A file was there but was not valid (the reason); recomputed and overwritten.
    Rebuilt(String),
}

fn err(file: &Path, detail: impl Into<String>) -> Error {
    Error::Model { file: file.display().to_string(), detail: detail.into() }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Reads a UTF-8 text file, gunzipping it first when it starts with gzip's magic bytes (so
/// `edits.json.gz` and `edits.json` both load, whatever the name says).
pub fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| err(path, format!("not a valid gzip file: {e}")))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|e| err(path, format!("not UTF-8 text: {e}")))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The header field that holds [`fields_digest`]; files written before it existed have none.
/// Outside the tensors' `sha256.<name>` keys, so no tensor name can collide with it.
pub const FIELDS_SUM: &str = "fields.sha256";

/// A checksum of the header's own fields (all but the checksums), in key order: a changed σ
/// or token count in a cache's header is as wrong as a changed tensor.
fn fields_digest(fields: &HashMap<String, String>) -> String {
    let mut keys: Vec<&String> = fields.keys().filter(|k| !k.starts_with("sha256.") && *k != FIELDS_SUM).collect();
    keys.sort();
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(fields[k].as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

/// Writes f32 tensors (name, shape, values) with the header fields and their checksums.
pub fn save(path: &Path, fields: &[(&str, String)], tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    }
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    let mut meta: HashMap<String, String> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    meta.insert(FIELDS_SUM.into(), fields_digest(&meta));
    let mut views = vec![];
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        meta.insert(format!("sha256.{name}"), sha256_hex(b));
        views.push((*name, TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| err(path, format!("tensor '{name}': {e}")))?));
    }
    let tmp = temp_name(path);
    let written = safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| err(path, format!("cannot write (its temporary {}): {e}", tmp.display())));
    let moved = written.and_then(|_| sync_and_rename(&tmp, path));
    if moved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    moved
}

/// Flushes `tmp` to the disk, moves it to `path` and flushes the directory entry, so after a
/// crash (power loss included) `path` holds either the old file or the whole new one.
pub fn sync_and_rename(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| err(tmp, format!("cannot flush to disk: {e}")))?;
    std::fs::rename(tmp, path).map_err(|e| err(path, format!("cannot move into place: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Directories cannot be opened for syncing on every platform; the rename stands anyway.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A temporary name beside `path` that no other writer uses: two processes, or two threads of
/// one, computing the same cache file at once each write their own and the last rename wins
/// (both files are whole and valid). Journal readers skip `.partial.` names.
fn temp_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("partial.{}.{n}", std::process::id()))
}

/// An exclusive lock on `dir`, held while the returned file lives: two processes writing one
/// journal or one experiment's files would interleave their records. The lock is the
/// operating system's (flock on Unix), so a killed process leaves none behind. `wait`: block
/// until it is free instead of refusing.
pub fn lock_dir(dir: &Path, wait: bool) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    let path = dir.join(".revive.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| err(&path, format!("cannot open the lock: {e}")))?;
    if wait {
        file.lock().map_err(|e| err(&path, format!("cannot lock: {e}")))?;
        return Ok(file);
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(dir, format!("in use by another revive process (it holds {}); wait for it to end or stop it", path.display()))),
        Err(std::fs::TryLockError::Error(e)) => Err(err(&path, format!("cannot lock: {e}"))),
    }
}

/// Writes bytes atomically and durably (a temporary file, flushed, then renamed).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durable_with(path, |w| std::io::Write::write_all(w, bytes).map(|_| bytes.len() as u64)).map(|_| ())
}

/// [`write_durable`] of what `write` writes as it goes (a file too large to build in memory
/// first); returns what `write` returns, the bytes written.
pub fn write_durable_with(path: &Path, write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<u64>) -> Result<u64> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    }
    let tmp = temp_name(path);
    let written = std::fs::File::create(&tmp)
        .and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            let n = write(&mut w)?;
            w.flush()?;
            Ok(n)
        })
        .map_err(|e| err(&tmp, format!("cannot write: {e}")))
        .and_then(|n| sync_and_rename(&tmp, path).map(|_| n));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A cache file read back and checked.
pub struct Stored {
    path: std::path::PathBuf,
    fields: HashMap<String, String>,
    bytes: Vec<u8>,
}

impl Stored {
    pub fn field(&self, name: &str) -> Result<&str> {
        self.fields.get(name).map(String::as_str).ok_or_else(|| err(&self.path, format!("header field '{name}' is missing")))
    }

    /// The names of every header field, the checksums' included.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// A header field parsed as a number.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T> {
        self.field(name)?.parse().map_err(|_| err(&self.path, format!("header field '{name}' is not a number")))
    }

    /// The shape of a stored tensor, if there is one by that name.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let st = SafeTensors::deserialize(&self.bytes).ok()?;
        st.tensor(name).ok().map(|t| t.shape().to_vec())
    }

    /// An f32 tensor of the given shape whose checksum matches and whose values are finite.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| err(&self.path, format!("not a valid safetensors file: {e}")))?;
        let t = st.tensor(name).map_err(|e| err(&self.path, format!("tensor '{name}': {e}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(err(&self.path, format!("tensor '{name}' is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape())));
        }
        let want = self.field(&format!("sha256.{name}"))?;
        if sha256_hex(t.data()) != want {
            return Err(err(&self.path, format!("tensor '{name}' does not match its header field 'sha256.{name}'")));
        }
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(err(&self.path, format!("tensor '{name}' holds a non-finite value at element {i}")));
        }
        Ok(v)
    }
}

/// Reads a cache file and checks the `expect`ed header fields; tensors are checked as they are
/// taken ([`Stored::tensor`]).
pub fn load(path: &Path, expect: &[(&str, String)]) -> Result<Stored> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| err(path, format!("unreadable header: {e}")))?;
    let fields = header.metadata().clone().unwrap_or_default();
    // Every tensor has its checksum and every checksum its tensor: a name damaged in the
    // header is found when the file is opened, not when that tensor is first taken.
    let names = tensors.names();
    if let Some(name) = names.iter().find(|n| !fields.contains_key(&format!("sha256.{n}"))) {
        return Err(err(path, format!("tensor '{name}' has no header field 'sha256.{name}'")));
    }
    if let Some(key) = fields.keys().find(|k| k.strip_prefix("sha256.").is_some_and(|n| !names.contains(&n))) {
        return Err(err(path, format!("header field '{key}' is the checksum of a tensor the file does not hold")));
    }
    if let Some(want) = fields.get(FIELDS_SUM) {
        if *want != fields_digest(&fields) {
            return Err(err(path, format!("the header fields do not match their checksum '{FIELDS_SUM}'")));
        }
    }
    let stored = Stored { path: path.to_path_buf(), fields, bytes };
    for (name, want) in expect {
        let got = stored.field(name)?;
        if got != want {
            return Err(err(path, format!("header field '{name}' is '{got}', expected '{want}'")));
        }
    }
    Ok(stored)
}

/// Reads a cache file, which must carry the checksum of its header fields: one flipped bit in
/// that checksum's own name would otherwise leave the fields unchecked. A cache from before the
/// checksum existed is computed again; a journal or a delta, which cannot be, is read with
/// [`load`].
pub fn load_cache(path: &Path, expect: &[(&str, String)]) -> Result<Stored> {
    let stored = load(path, expect)?;
    stored.field(FIELDS_SUM)?;
    Ok(stored)
}

/// The value cached at `path` if `read` accepts the file, else `compute`'s, written by `write`.
pub fn load_or_compute<T>(
    path: &Path,
    what: &str,
    read: impl FnOnce(&Path) -> Result<T>,
    compute: impl FnOnce() -> Result<T>,
    write: impl FnOnce(&Path, &T) -> Result<()>,
) -> Result<(T, Outcome)> {
    let outcome = if path.exists() {
        match read(path) {
            Ok(v) => return Ok((v, Outcome::Reused)),
            Err(e) => {
                log::warn!("{}: cached {what} rejected ({e}); rebuilding it", path.display());
                Outcome::Rebuilt(e.to_string())
            }
        }
    } else {
        Outcome::Computed
    };
    let v = compute()?;
    // The value is good whether or not it can be kept: a cache that cannot be written (read-only,
    // full, invalid REVIVE_CACHE) costs the next run the computation, never this run its result.
    if let Err(e) = write(path, &v) {
        log::warn!("{}: the {what} could not be cached ({e}); it will be computed again next time", path.display());
    }
    Ok((v, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers in the JSON of cache headers and journal records (σ of a guard's basis, metrics,
    /// hyper-parameters) read back as the same f64, bit for bit: serde_json's default parser
    /// may land one ulp away (it read σ = 1.8000003099441741 as 1.800000309944174, and a cached
    /// basis then differed from the computed one), so the crate is built with float_roundtrip.
    #[test]
    fn f64_values_survive_json_bit_for_bit() {
        let mut r = crate::testing::rng(5);
        let mut values = vec![1.8000003099441741f64, 0.1, 1e-300, 5e-324, f64::MAX, 22.053145372867584];
        values.extend((0..20_000).map(|_| f64::from_bits(rand::Rng::random::<u64>(&mut r) >> 2)));
        values.extend((0..20_000).map(|_| rand::Rng::random_range(&mut r, -100.0..100.0)));
        let text = serde_json::to_string(&values).unwrap();
        let back: Vec<f64> = serde_json::from_str(&text).unwrap();
        let differ = values.iter().zip(&back).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{differ} of {} values changed through JSON", values.len());
    }

    /// A header field changed after the save (a σ, a token count) is refused like a changed
    /// tensor. A journal or delta from before the fields' checksum existed still loads; a cache
    /// must have it (it is computed again).
    #[test]
    fn changed_header_fields_are_refused() {
        let dir = std::env::temp_dir().join(format!("revive-store-fields-{}", std::process::id()));
        let path = dir.join("c.safetensors");
        save(&path, &[("key", "a".into()), ("info", r#"{"sigma":[2.5,1.0]}"#.into())], &[("t", vec![2], &[1.0, 2.0])]).unwrap();
        assert_eq!(load(&path, &[("key", "a".into())]).unwrap().tensor("t", &[2]).unwrap(), [1.0, 2.0]);
        let rewrite = |edit: &dyn Fn(&mut HashMap<String, String>)| {
            let bytes = std::fs::read(&path).unwrap();
            let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
            let mut meta = header.metadata().clone().unwrap();
            edit(&mut meta);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let t = st.tensor("t").unwrap();
            safetensors::serialize_to_file([("t", t)], Some(meta), &path).unwrap();
        };
        rewrite(&|m| {
            m.insert("info".into(), r#"{"sigma":[2.6,1.0]}"#.into());
        });
        let e = load(&path, &[("key", "a".into())]).err().expect("changed field accepted").to_string();
        assert!(e.contains(FIELDS_SUM) && e.contains("c.safetensors"), "{e}");
        rewrite(&|m| {
            m.remove(FIELDS_SUM);
        });
        assert!(load(&path, &[("key", "a".into())]).is_ok(), "a journal or delta without the fields' checksum");
        let e = load_cache(&path, &[("key", "a".into())]).err().expect("a cache without the fields' checksum accepted").to_string();
        assert!(e.contains(FIELDS_SUM) && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A tensor's name damaged in the header is refused when the file is opened, as is a
    /// checksum whose key was damaged (its tensor has none), and a checksum of no tensor.
    #[test]
    fn tensors_and_their_checksums_pair_up() {
        let dir = std::env::temp_dir().join(format!("revive-store-names-{}", std::process::id()));
        let path = dir.join("n.safetensors");
        save(&path, &[("key", "a".into())], &[("state.targets", vec![2], &[1.0, 2.0]), ("u0", vec![1], &[3.0])]).unwrap();
        let good = std::fs::read(&path).unwrap();
        assert!(load(&path, &[]).is_ok());
        let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let find = |needle: &[u8], after: usize| after + good[after..header_end].windows(needle.len()).position(|w| w == needle).unwrap();
        // The tensor's own name (its entry, not its checksum's key; 'a' becomes '`'), then the
        // checksum's key.
        let checksum_key = find(b"\"sha256.state.targets\"", 0);
        let tensor_name = (0..header_end).find(|&i| good[i..].starts_with(b"\"state.targets\"") && !good[..i].ends_with(b"sha256.")).unwrap();
        for (at, want) in [(tensor_name + 3, "tensor 'st`te.targets' has no header field"), (checksum_key + 10, "tensor 'state.targets' has no header field")] {
            let mut b = good.clone();
            b[at] ^= 0x01;
            std::fs::write(&path, &b).unwrap();
            let e = load(&path, &[]).err().expect("a damaged name accepted").to_string();
            assert!(e.contains(want) && e.contains("n.safetensors"), "{e}");
        }
        let st = SafeTensors::deserialize(&good).unwrap();
        let (_, header) = SafeTensors::read_metadata(&good).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.insert("sha256.gone".into(), "00".into());
        safetensors::serialize_to_file(st.tensors(), Some(meta), &path).unwrap();
        let e = load(&path, &[]).err().expect("a checksum of no tensor accepted").to_string();
        assert!(e.contains("'sha256.gone' is the checksum of a tensor the file does not hold"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory locked by one holder is refused to a second, with the directory named, and
    /// free again once the first lets go; a waiting holder gets it then.
    #[test]
    fn a_locked_directory_is_refused_until_it_is_free() {
        let dir = std::env::temp_dir().join(format!("revive-lock-{}", std::process::id()));
        let first = lock_dir(&dir, false).unwrap();
        let refused = lock_dir(&dir, false).unwrap_err().to_string();
        assert!(refused.contains(&dir.display().to_string()) && refused.contains("in use"), "{refused}");
        let waiter = std::thread::spawn({
            let dir = dir.clone();
            move || lock_dir(&dir, true).map(|_| ())
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "a waiting lock was granted while the first was held");
        drop(first);
        waiter.join().unwrap().unwrap();
        drop(lock_dir(&dir, false).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cache that cannot be written (here: its directory would have to be inside a file)
    /// loses the next run the computation, not this run its result; nothing is left behind.
    #[test]
    fn an_unwritable_cache_is_not_a_failure() {
        let root = std::env::temp_dir().join(format!("revive-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let blocker = root.join("not-a-dir");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("value.safetensors");
        let write = |p: &Path, v: &Vec<f32>| save(p, &[("format", "test".into())], &[("v", vec![v.len()], v)]);
        let (v, outcome) = load_or_compute(&path, "test value", |_| Err(Error::Edit("unreadable".into())), || Ok(vec![1.0f32, 2.0]), write).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        assert!(matches!(outcome, Outcome::Computed));
        // And where it can be written, it is, with no temporary left.
        let ok_path = root.join("ok.safetensors");
        load_or_compute(&ok_path, "test value", |_| Err(Error::Edit("unreadable".into())), || Ok(vec![3.0f32]), write).unwrap();
        let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Writers racing on one cache file (as two processes sharing REVIVE_CACHE computing the
    /// same C0 do) all succeed, and what is left is one whole, valid file.
    #[test]
    fn concurrent_writers_leave_one_valid_file() {
        let root = std::env::temp_dir().join(format!("revive-store-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let path = root.join("c0.safetensors");
        let fields = [("format", "race".to_string())];
        std::thread::scope(|s| {
            for t in 0..4 {
                let (path, fields) = (&path, &fields);
                s.spawn(move || {
                    let value: Vec<f32> = (0..50_000).map(|i| (i * (t + 1)) as f32).collect();
                    let write = |p: &Path, v: &Vec<f32>| save(p, fields, &[("v", vec![v.len()], v)]);
                    let (got, _) = load_or_compute(path, "race", |p| load(p, fields).and_then(|st| st.tensor("v", &[50_000])), || Ok(value.clone()), write).unwrap();
                    assert_eq!(got.len(), 50_000);
                });
            }
        });
        let back = load(&path, &fields).unwrap().tensor("v", &[50_000]).unwrap();
        assert!((1..=4).any(|t| back.iter().enumerate().all(|(i, &x)| x == (i * t) as f32)), "a mix of writers");
        let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "temporaries left: {names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
