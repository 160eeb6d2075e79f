//! A GGUF writer: for tests and for tools that build small models. Tensors are given already
//! encoded (see [`quantize`]) so tests can check the reader against hand-built blocks.

use super::{GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC};
pub use super::quant::quantize;

pub struct Tensor {
    pub name: String,
    /// ne[0] first, as stored in the file.
    pub dims: Vec<usize>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

#[derive(Default)]
pub struct GgufWriter {
    /// Metadata entries already encoded (key, type, value), written first and as they are:
    /// another file's, copied whole.
    pub raw_kv: Vec<Vec<u8>>,
    pub kv: Vec<(String, Value)>,
    /// The tensor data alignment when the raw entries set `general.alignment` (the typed
    /// entries are read for it otherwise).
    pub alignment: Option<u64>,
    pub tensors: Vec<Tensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array's element type is unknowable here; u8 is as good as any.
            out.extend(items.first().map_or(0, Value::type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl GgufWriter {
    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        self.kv.push((key.into(), v));
        self
    }

    pub fn tensor(&mut self, name: &str, dims: &[usize], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push(Tensor { name: name.into(), dims: dims.to_vec(), type_id: ty.id(), data });
        self
    }

    /// The alignment set, else the one written in `general.alignment`, else the default.
    fn alignment(&self) -> usize {
        self.alignment
            .or_else(|| self.kv.iter().find(|(k, _)| k == "general.alignment").and_then(|(_, v)| v.as_u64()))
            .map_or(DEFAULT_ALIGNMENT as usize, |a| a as usize)
    }

    pub fn to_bytes(&self, version: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out, version).expect("writing to memory cannot fail");
        out
    }

    /// Writes the file to `out` as it goes: the header, then each tensor's data after its
    /// padding, so that the file is never held whole in memory beside its tensors (to_bytes
    /// did, doubling an export's peak). Returns the bytes written.
    pub fn write_to(&self, out: &mut impl std::io::Write, version: u32) -> std::io::Result<u64> {
        let align = self.alignment();
        let mut head = Vec::new();
        head.extend(MAGIC);
        head.extend(version.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend(((self.raw_kv.len() + self.kv.len()) as u64).to_le_bytes());
        self.raw_kv.iter().for_each(|entry| head.extend(entry));
        for (k, v) in &self.kv {
            put_str(&mut head, k);
            head.extend(v.type_id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| head.extend((*d as u64).to_le_bytes()));
            head.extend(t.type_id.to_le_bytes());
            head.extend((offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        out.write_all(&head)?;
        let mut written = head.len();
        let zeros = vec![0u8; align];
        let pad = |out: &mut dyn std::io::Write, written: &mut usize| -> std::io::Result<()> {
            let n = written.next_multiple_of(align) - *written;
            out.write_all(&zeros[..n])?;
            *written += n;
            Ok(())
        };
        // Each tensor padded to the alignment, the last one too: llama.cpp reads the data
        // section as the sum of the padded sizes.
        for t in &self.tensors {
            pad(out, &mut written)?;
            out.write_all(&t.data)?;
            written += t.data.len();
        }
        pad(out, &mut written)?;
        Ok(written as u64)
    }
}
