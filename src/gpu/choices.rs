//! The kernel choices `revive tune` (or a first use) measured on one adapter and driver, kept
//! on disk so that later runs start with them.

use crate::error::{Error, Result};

/// Kernel choices measured on one adapter and driver, kept in
/// `<cache>/tune/<adapter>-<hash of name, driver, backend>.json`. `REVIVE_TUNE=0` ignores the
/// file (the fixed rules apply), so a run can be compared with and without tuning.
#[derive(Default)]
pub(super) struct Choices {
    pub(super) table: std::collections::BTreeMap<String, String>,
    /// Decisions derived from the table for exact keys (`Gpu::derived_choice`), forgotten
    /// whenever a choice is recorded.
    pub(super) derived: std::collections::HashMap<[u64; 4], u8, foldhash::fast::RandomState>,
    /// Counts recorded choices, so that a decision derived while one was recorded is not kept.
    pub(super) generation: u64,
}

/// Derived decisions kept at most: one per exact product shape, so a long run of prompts of
/// every length cannot grow the table without bound.
pub(super) const DERIVED_CAPACITY: usize = 4096;

/// The kernel family a table of choices was measured with: raised whenever a matmul kernel is
/// added or changed, so that a table measured without it (or with its old form) is measured
/// again rather than keeping a choice among the old kernels. 1: up to the 16×16 tile; 2: with
/// the 32×32 and 64×64 tiles; 3: the block kernel at up to 8×16 outputs per thread, the lanes
/// kernel; 4: the lanes dot kernel.
const CHOICES_VERSION: u32 = 4;

#[derive(serde::Serialize, serde::Deserialize)]
struct ChoicesFile {
    /// Absent in the first tables: version 1.
    #[serde(default = "first_version")]
    kernels_version: u32,
    adapter: String,
    driver: String,
    backend: String,
    choices: std::collections::BTreeMap<String, String>,
}

fn first_version() -> u32 {
    1
}

impl Choices {
    fn path(info: &wgpu::AdapterInfo) -> std::path::PathBuf {
        use sha2::Digest;
        let id = format!("{}|{}|{}|{:?}|{:x}|{:x}", info.name, info.driver, info.driver_info, info.backend, info.vendor, info.device);
        let hash: String = sha2::Sha256::digest(id.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
        let name: String = info.name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
        crate::model::fetch::cache_dir().join("tune").join(format!("{name}-{hash}.json"))
    }

    pub(super) fn load(info: &wgpu::AdapterInfo) -> Choices {
        if !tuning_enabled() {
            return Choices::default();
        }
        Self::load_from(&Self::path(info))
    }

    fn load_from(path: &std::path::Path) -> Choices {
        let Ok(text) = std::fs::read_to_string(path) else { return Choices::default() };
        match serde_json::from_str::<ChoicesFile>(&text) {
            Ok(f) if f.kernels_version == CHOICES_VERSION => Choices { table: f.choices, ..Choices::default() },
            Ok(f) => {
                log::info!("the kernel choices in {} were measured for kernel family {}, this build has {CHOICES_VERSION}: measuring again", path.display(), f.kernels_version);
                Choices::default()
            }
            Err(e) => {
                // A damaged table only costs speed: say so and use the fixed rules.
                log::warn!("ignoring the kernel choices in {}: {e}", path.display());
                Choices::default()
            }
        }
    }

    /// Writes the table into the adapter's file, merged with what the file holds now.
    /// `keep_file`: a choice the file already has stays, and this table takes it too — two
    /// processes that measured on first use at once (experiment arms started together) then
    /// run the same kernels, as every later process reading the file will, so that a resumed
    /// session gives the bits it gave before. Otherwise (`revive tune`) this table's choices
    /// replace the file's.
    pub(super) fn save(&mut self, info: &wgpu::AdapterInfo, keep_file: bool) -> Result<std::path::PathBuf> {
        let header = ChoicesFile {
            kernels_version: CHOICES_VERSION,
            adapter: info.name.clone(),
            driver: format!("{} {}", info.driver, info.driver_info),
            backend: format!("{:?}", info.backend),
            choices: Default::default(),
        };
        self.save_to(&Self::path(info), header, keep_file)
    }

    fn save_to(&mut self, path: &std::path::Path, mut file: ChoicesFile, keep_file: bool) -> Result<std::path::PathBuf> {
        let dir = path.parent().ok_or_else(|| Error::Gpu(format!("kernel choices: {} has no folder", path.display())))?;
        // Read, merge and write as one step among the processes sharing the cache.
        let _lock = crate::store::lock_dir(dir, true)?;
        let on_disk = Self::load_from(path).table;
        // The later of the two wins each key.
        let (mut merged, winners) = if keep_file { (self.table.clone(), on_disk) } else { (on_disk, self.table.clone()) };
        merged.extend(winners);
        file.choices = merged.clone();
        let text = serde_json::to_string_pretty(&file).map_err(|e| Error::Gpu(format!("kernel choices: {e}")))?;
        crate::store::write_durable(path, text.as_bytes())?;
        if merged != self.table {
            self.table = merged;
            self.derived.clear();
            self.generation += 1;
        }
        Ok(path.to_path_buf())
    }
}

/// `REVIVE_TUNE=0` turns measured kernel choices off: none are read, none measured on first use.
pub fn tuning_enabled() -> bool {
    !std::env::var("REVIVE_TUNE").is_ok_and(|v| v == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A table is read only when measured with this build's kernel family: the first tables
    /// (no version field, measured before the 32×32 tile), those of the family before this one
    /// and damaged files are measured again.
    #[test]
    fn tables_of_another_kernel_family_or_damaged_are_not_read() {
        let dir = std::env::temp_dir().join(format!("revive-choices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let body = r#""adapter": "x", "driver": "y", "backend": "Vulkan", "choices": {"matmul/nt/m1/n1024/k1024": "dot"}"#;
        let current = table_file(&dir, "current.json", &format!("{{\"kernels_version\": {CHOICES_VERSION}, {body}}}"));
        let first = table_file(&dir, "first.json", &format!("{{{body}}}"));
        let previous = table_file(&dir, "previous.json", &format!("{{\"kernels_version\": {}, {body}}}", CHOICES_VERSION - 1));
        let damaged = table_file(&dir, "damaged.json", "{\"adapter\": ");
        assert_eq!(Choices::load_from(&current).table.get("matmul/nt/m1/n1024/k1024").map(String::as_str), Some("dot"));
        assert!(Choices::load_from(&first).table.is_empty());
        assert!(Choices::load_from(&previous).table.is_empty());
        assert!(Choices::load_from(&damaged).table.is_empty());
        assert!(Choices::load_from(&dir.join("absent.json")).table.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two processes that measured the same shapes on first use end with one table: the
    /// second to save keeps the first's choices where both measured (and runs them from then
    /// on) and adds its own elsewhere; `revive tune` (not keeping the file) replaces them.
    #[test]
    fn first_use_saves_converge_on_one_table() {
        let dir = std::env::temp_dir().join(format!("revive-choices-merge-{}", std::process::id()));
        let path = dir.join("adapter.json");
        let header = || ChoicesFile { kernels_version: CHOICES_VERSION, adapter: "x".into(), driver: "y".into(), backend: "Vulkan".into(), choices: Default::default() };
        let table = |pairs: &[(&str, &str)]| Choices { table: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Choices::default() };
        let mut first = table(&[("a", "tile16"), ("b", "dot")]);
        first.save_to(&path, header(), true).unwrap();
        let mut second = table(&[("a", "tile32"), ("c", "block")]);
        let generation = second.generation;
        second.save_to(&path, header(), true).unwrap();
        let want = table(&[("a", "tile16"), ("b", "dot"), ("c", "block")]).table;
        assert_eq!(second.table, want);
        assert!(second.generation > generation, "the adopted choices did not reset the derived decisions");
        assert_eq!(Choices::load_from(&path).table, want);
        let mut tuned = table(&[("a", "tile64")]);
        tuned.save_to(&path, header(), false).unwrap();
        assert_eq!(Choices::load_from(&path).table.get("a").map(String::as_str), Some("tile64"));
        assert_eq!(Choices::load_from(&path).table.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
