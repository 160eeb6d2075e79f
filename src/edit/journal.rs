//! The journal of an editing session: an append-only directory of records, one file each,
//! numbered in order — a `batch` record (the requests, every update as written, stored as its
//! factors or as a dense tensor, the filter reports, the method's record and state, the
//! metrics before) written before the batch touches the weights, then a `metrics` record (the
//! metrics after). Each file is a checksummed safetensors file (crate::store) written to a
//! temporary name, flushed to disk and renamed, so a record is either whole or absent; each
//! header carries the chain hash of the record before it, so a record that was removed,
//! reordered or altered is reported, naming the file.
//!
//! The base model plus the batch records is the edited model: [`Journal::replay`] rebuilds it
//! at any batch (resume, roll back).

use super::guard::FilterReport;
use super::update::{Delta, Update};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use super::method::StateTensors;
use crate::model::weights::HostTensor;
use crate::store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FORMAT: &str = "revive-journal-v1";
/// The header fields of a record besides the checksums, as [`write_record`] writes them.
const RECORD_FIELDS: [&str; 6] = ["format", "kind", "prev", "chain", "record", "tensors"];

/// How one update was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateMeta {
    pub matrix: String,
    /// Low-rank updates store their factors; `None` for a dense one.
    pub rank: Option<usize>,
    pub shape: [usize; 2],
    /// ‖ΔW‖_F as proposed by the method and as written.
    pub proposed_norm: f64,
    pub norm: f64,
    pub filter: Option<FilterReport>,
}

/// What a batch record says (its tensors are read on demand).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchHeader {
    /// 0-based batch number.
    pub batch: usize,
    /// The requests of the batch: indices into the session's requests.json, [start, end).
    pub requests: [usize; 2],
    pub case_ids: Vec<Option<u64>>,
    pub updates: Vec<UpdateMeta>,
    /// Names of the method's state tensors.
    pub state: Vec<String>,
    pub method: serde_json::Value,
    pub before: serde_json::Value,
    /// Time the method took on the batch.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsHeader {
    pub batch: usize,
    pub after: serde_json::Value,
    /// Wall time of the whole batch including the metrics.
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub enum Record {
    Batch(BatchHeader),
    Metrics(MetricsHeader),
}

/// One record on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: usize,
    pub path: PathBuf,
    pub chain: String,
    pub record: Record,
}

pub struct Journal {
    dir: PathBuf,
    pub entries: Vec<Entry>,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Model { file: path.display().to_string(), detail: detail.into() }
}

fn chain_of(prev: &str, kind: &str, record: &str, tensor_sums: &[(String, String)]) -> String {
    let mut text = format!("{prev}\n{kind}\n{record}\n");
    for (n, s) in tensor_sums {
        text.push_str(&format!("{n}={s}\n"));
    }
    store::sha256_hex(text.as_bytes())
}

/// Writes record `seq` of `kind` into the journal directory `dir`, chained on the record
/// before it (`prev`, its chain hash): the one writer of records. Returns the path and chain.
pub(crate) fn write_record(dir: &Path, seq: usize, kind: &str, prev: &str, record: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(PathBuf, String)> {
    let path = dir.join(format!("{seq:06}-{kind}.safetensors"));
    let sums: Vec<(String, String)> = tensors.iter().map(|(n, _, v)| (n.clone(), store::sha256_hex(bytemuck::cast_slice(v)))).collect();
    let chain = chain_of(prev, kind, record, &sums);
    let names = serde_json::to_string(&tensors.iter().map(|t| t.0.clone()).collect::<Vec<_>>()).map_err(|e| bad(&path, format!("tensor names: {e}")))?;
    let values = [FORMAT.to_string(), kind.to_string(), prev.to_string(), chain.clone(), record.to_string(), names];
    let fields: Vec<(&str, String)> = RECORD_FIELDS.into_iter().zip(values).collect();
    let views: Vec<(&str, Vec<usize>, &[f32])> = tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice())).collect();
    store::save(&path, &fields, &views)?;
    Ok((path, chain))
}

impl Journal {
    /// Where the records of a session directory live.
    pub fn dir_of(session: &Path) -> PathBuf {
        session.join("journal")
    }

    /// Opens (or starts) the journal of a session directory to write it, checking every record
    /// and the chain. Leftovers of a write that was interrupted (temporary files) are removed,
    /// and a damaged last record (its header, or the values of the last batch) is set aside to
    /// be redone. Only the process that holds the session's lock may do this.
    pub fn open(session: &Path) -> Result<Journal> {
        Self::load(session, true)
    }

    /// The journal as it stands, to read (`revive journal`, `revive apply`) while a session
    /// may be writing it: nothing is removed or moved; a temporary file is not a record, and a
    /// damaged last record is left out with a warning.
    pub fn read(session: &Path) -> Result<Journal> {
        Self::load(session, false)
    }

    fn load(session: &Path, write: bool) -> Result<Journal> {
        let dir = Self::dir_of(session);
        if write {
            std::fs::create_dir_all(&dir).map_err(|e| bad(&dir, format!("cannot create: {e}")))?;
        } else if !dir.exists() {
            return Ok(Journal { dir, entries: vec![] });
        }
        let mut files = vec![];
        for e in std::fs::read_dir(&dir).map_err(|e| bad(&dir, format!("cannot list: {e}")))? {
            let path = e.map_err(|e| bad(&dir, format!("cannot list: {e}")))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            // Our temporary names, and the safetensors crate's own (`.tmpXXXXXX`: its
            // serialize_to_file writes a sibling temporary file and renames it): a write a
            // kill interrupted.
            if name.contains(".partial.") || name.starts_with(".tmp") {
                if write {
                    log::warn!("{}: removing an interrupted write", path.display());
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if name.ends_with(".torn") {
                continue;
            }
            let Some((seq, kind)) = name.strip_suffix(".safetensors").and_then(|s| s.split_once('-')) else {
                return Err(bad(&path, "not a journal record (expected NNNNNN-batch.safetensors or NNNNNN-metrics.safetensors)"));
            };
            let seq: usize = seq.parse().map_err(|_| bad(&path, "the record number is not a number"))?;
            files.push((seq, kind.to_string(), path));
        }
        files.sort_by_key(|f| f.0);
        let n = files.len();
        let mut entries: Vec<Entry> = vec![];
        for (i, (seq, kind, path)) in files.into_iter().enumerate() {
            if seq != i + 1 {
                return Err(bad(&path, format!("record {seq} follows record {i}: a record is missing")));
            }
            let last = i + 1 == n;
            match Self::read_record(&entries, &kind, seq, &path) {
                Ok(e) => entries.push(e),
                // The last record alone may be damaged (a disk that lost the end of a write):
                // it is set aside and its batch done again, which gives the same bits. A damaged
                // record anywhere else means the history is not trustworthy.
                Err(e) if last && write => {
                    log::warn!("{}: the last journal record is damaged ({e}); it is set aside (.torn) and redone", path.display());
                    set_aside(&path)?;
                }
                Err(e) if last => log::warn!("{}: the last journal record is damaged or still being written ({e}); read without it", path.display()),
                Err(e) => return Err(e),
            }
        }
        // The last batch's values are checked here too, not first at its replay: a batch whose
        // header reads but whose values were damaged is set aside, with the metrics record that
        // may follow it, and done again.
        if let Some(pos) = entries.iter().rposition(|e| matches!(e.record, Record::Batch(_))) {
            if let Err(e) = Self::read_values(&entries[pos]) {
                let last = &entries[pos].path;
                if write {
                    log::warn!("{}: the values of the last batch are damaged ({e}); it is set aside (.torn) with what follows it and redone", last.display());
                    for later in &entries[pos..] {
                        set_aside(&later.path)?;
                    }
                } else {
                    log::warn!("{}: the values of the last batch are damaged ({e}); read without it", last.display());
                }
                entries.truncate(pos);
            }
        }
        let j = Journal { dir, entries };
        j.check_order()?;
        Ok(j)
    }

    /// One record, checked against the chain of the records before it.
    fn read_record(entries: &[Entry], kind: &str, seq: usize, path: &Path) -> Result<Entry> {
        let prev = entries.last().map_or(String::new(), |e| e.chain.clone());
        let st = store::load(path, &[("format", FORMAT.to_string()), ("kind", kind.to_string()), ("prev", prev.clone())])?;
        let text = st.field("record")?.to_string();
        let names: Vec<String> = serde_json::from_str(st.field("tensors")?).map_err(|e| bad(path, format!("header field 'tensors': {e}")))?;
        let sums = names.iter().map(|n| Ok((n.clone(), st.field(&format!("sha256.{n}"))?.to_string()))).collect::<Result<Vec<_>>>()?;
        // A field the writer never writes is damage too: one bit flipped in the name of the
        // header's own checksum leaves a file whose other fields read, and that checksum
        // unchecked (records written before it existed have none).
        let known = |f: &str| RECORD_FIELDS.contains(&f) || f == store::FIELDS_SUM || f.strip_prefix("sha256.").is_some_and(|n| names.iter().any(|m| m == n));
        if let Some(f) = st.field_names().find(|f| !known(f)) {
            return Err(bad(path, format!("header field '{f}' is not one a journal record has: it was altered")));
        }
        let chain = chain_of(&prev, kind, &text, &sums);
        if st.field("chain")? != chain {
            return Err(bad(path, "header field 'chain' does not match the record: it was altered"));
        }
        let record = match kind {
            "batch" => Record::Batch(serde_json::from_str(&text).map_err(|e| bad(path, format!("header field 'record': {e}")))?),
            "metrics" => Record::Metrics(serde_json::from_str(&text).map_err(|e| bad(path, format!("header field 'record': {e}")))?),
            k => return Err(bad(path, format!("unknown record kind '{k}'"))),
        };
        Ok(Entry { seq, path: path.to_path_buf(), chain, record })
    }

    /// Batches are numbered 0, 1, … and each metrics record follows its batch.
    fn check_order(&self) -> Result<()> {
        let mut next = 0;
        let mut open: Option<usize> = None;
        for e in &self.entries {
            match &e.record {
                Record::Batch(b) => {
                    if b.batch != next {
                        return Err(bad(&e.path, format!("batch {} where batch {next} was due", b.batch)));
                    }
                    next += 1;
                    open = Some(b.batch);
                }
                Record::Metrics(m) => {
                    if open != Some(m.batch) {
                        return Err(bad(&e.path, format!("metrics of batch {} do not follow that batch", m.batch)));
                    }
                    open = None;
                }
            }
        }
        Ok(())
    }

    pub fn batches(&self) -> impl Iterator<Item = (&Entry, &BatchHeader)> {
        self.entries.iter().filter_map(|e| match &e.record {
            Record::Batch(b) => Some((e, b)),
            _ => None,
        })
    }

    pub fn metrics_of(&self, batch: usize) -> Option<&MetricsHeader> {
        self.entries.iter().find_map(|e| match &e.record {
            Record::Metrics(m) if m.batch == batch => Some(m),
            _ => None,
        })
    }

    pub fn n_batches(&self) -> usize {
        self.batches().count()
    }

    fn append(&mut self, kind: &str, record: String, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
        let seq = self.entries.len() + 1;
        let prev = self.entries.last().map_or(String::new(), |e| e.chain.clone());
        // Read back before it is written: a record that would not parse (a NaN written as
        // null) must not reach the disk, where every resume would set it aside and redo it.
        let parsed = match kind {
            "batch" => serde_json::from_str(&record).map(Record::Batch),
            _ => serde_json::from_str(&record).map(Record::Metrics),
        };
        let parsed = parsed.map_err(|e| Error::Edit(format!("journal: record {seq} ({kind}) would not read back ({e}): {record}")))?;
        let (path, chain) = write_record(&self.dir, seq, kind, &prev, &record, tensors)?;
        self.entries.push(Entry { seq, path, chain, record: parsed });
        Ok(())
    }

    /// Appends a batch record: the header, each update's values, the method's state tensors.
    pub fn append_batch(&mut self, gpu: &Gpu, header: &BatchHeader, updates: &[Update], state: &[(String, HostTensor)]) -> Result<()> {
        if header.updates.len() != updates.len() || header.state.len() != state.len() {
            return Err(Error::Edit("journal: the batch header does not list its updates and state".into()));
        }
        let mut tensors = vec![];
        for (i, u) in updates.iter().enumerate() {
            for (part, shape, values) in u.delta.to_host(gpu)? {
                tensors.push((format!("u{i}.{part}"), shape, values));
            }
        }
        for (name, t) in state {
            tensors.push((format!("state.{name}"), t.shape.clone(), t.data.clone()));
        }
        let text = serde_json::to_string(header).map_err(|e| Error::Edit(format!("journal record to JSON: {e}")))?;
        self.append("batch", text, &tensors)
    }

    pub fn append_metrics(&mut self, m: &MetricsHeader) -> Result<()> {
        let text = serde_json::to_string(m).map_err(|e| Error::Edit(format!("journal record to JSON: {e}")))?;
        self.append("metrics", text, &[])
    }

    /// A batch's updates and state tensors, read back, checked and put on the GPU.
    pub fn load_batch(&self, gpu: &Gpu, entry: &Entry) -> Result<(Vec<Update>, StateTensors)> {
        let (host, state) = self.read_batch(entry)?;
        let up = |t: &HostTensor| gpu.upload(&t.data, &t.shape);
        let updates = host
            .iter()
            .map(|(matrix, d)| {
                let delta = match d {
                    HostDelta::Dense(t) => Delta::Dense(up(t)?),
                    HostDelta::LowRank { left, right } => Delta::LowRank { left: up(left)?, right: up(right)? },
                };
                Ok(Update { matrix: matrix.clone(), delta })
            })
            .collect::<Result<_>>()?;
        Ok((updates, state))
    }

    /// A batch's updates (matrix name and values) and state tensors, read back and checked
    /// against the header's shapes and checksums.
    pub fn read_batch(&self, entry: &Entry) -> Result<(Vec<(String, HostDelta)>, StateTensors)> {
        Self::read_values(entry)
    }

    fn read_values(entry: &Entry) -> Result<(Vec<(String, HostDelta)>, StateTensors)> {
        let Record::Batch(h) = &entry.record else { return Err(bad(&entry.path, "not a batch record")) };
        let st = store::load(&entry.path, &[("format", FORMAT.to_string()), ("chain", entry.chain.clone())])?;
        let take = |name: String, shape: [usize; 2]| -> Result<HostTensor> { Ok(HostTensor::new(shape.to_vec(), st.tensor(&name, &shape)?)) };
        let mut updates = vec![];
        for (i, u) in h.updates.iter().enumerate() {
            let [m, n] = u.shape;
            let delta = match u.rank {
                None => HostDelta::Dense(take(format!("u{i}.dense"), [m, n])?),
                Some(r) => HostDelta::LowRank { left: take(format!("u{i}.left"), [m, r])?, right: take(format!("u{i}.right"), [n, r])? },
            };
            updates.push((u.matrix.clone(), delta));
        }
        let mut state = vec![];
        for name in &h.state {
            let key = format!("state.{name}");
            let shape = shape_of(&st, &entry.path, &key)?;
            state.push((name.clone(), HostTensor::new(shape.clone(), st.tensor(&key, &shape)?)));
        }
        Ok((updates, state))
    }
}

/// An update as stored in a record.
pub enum HostDelta {
    Dense(HostTensor),
    /// ΔW = left · rightᵀ.
    LowRank { left: HostTensor, right: HostTensor },
}

/// Moves a damaged record out of the journal (kept beside it as `.torn`, for a look).
fn set_aside(path: &Path) -> Result<()> {
    std::fs::rename(path, path.with_extension("safetensors.torn")).map_err(|e| bad(path, format!("cannot move a damaged record aside: {e}")))
}

fn shape_of(st: &store::Stored, path: &Path, name: &str) -> Result<Vec<usize>> {
    st.shape(name).ok_or_else(|| bad(path, format!("tensor '{name}' is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose JSON would not read back (serde_json writes a NaN as null) is refused
    /// before anything reaches the disk: on disk it would be set aside and redone, the same
    /// way, at every resume.
    #[test]
    fn a_record_that_would_not_read_back_is_not_written() {
        let session = std::env::temp_dir().join(format!("revive-journal-nan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&session);
        let mut j = Journal::open(&session).unwrap();
        let e = j.append_metrics(&MetricsHeader { batch: 0, after: serde_json::Value::Null, seconds: f64::NAN }).unwrap_err().to_string();
        assert!(e.contains("would not read back"), "{e}");
        assert_eq!(std::fs::read_dir(Journal::dir_of(&session)).unwrap().count(), 0, "a file was written");
        j.append_metrics(&MetricsHeader { batch: 0, after: serde_json::Value::Null, seconds: 1.5 }).unwrap();
        assert_eq!(std::fs::read_dir(Journal::dir_of(&session)).unwrap().count(), 1, "a finite record was not written");
        let _ = std::fs::remove_dir_all(&session);
    }
}
