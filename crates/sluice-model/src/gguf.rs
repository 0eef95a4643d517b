//! GGUF reader (versions 2 and 3): header, metadata of every value type, tensor infos, alignment,
//! and tensor data borrowed from a memory map.
//!
//! Every read is bounds-checked against the file; a truncated or corrupt file yields
//! `ModelError::InvalidGguf` naming what was wrong, never a panic or an out-of-bounds read.
//! Array and string lengths are checked against the bytes left before anything is allocated,
//! so a hostile length field cannot make us allocate gigabytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{ModelError, Result};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Unsigned integer of any width.
    U64(u64),
    /// Signed integer of any width.
    I64(i64),
    /// Float of any width.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced, not rejected: vocabularies contain odd bytes).
    Str(String),
    /// Homogeneous array.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U64(v) => Some(v),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F64(v) => Some(v),
            Self::U64(v) => Some(v as f64),
            Self::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file and how it is encoded.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (contiguous).
    pub dims: Vec<u64>,
    /// Encoding.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file with its tensor data memory-mapped.
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata key/values.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    data: Arc<dyn AsRef<[u8]> + Send + Sync>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::InvalidGguf(msg.into())
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad(format!("truncated while reading {what} at byte {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// A length field, rejected when it cannot possibly fit in the bytes left.
    fn len(&mut self, min_elem_size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| bad(format!("{what} length {n} too large")))?;
        if n.saturating_mul(min_elem_size) > self.remaining() {
            return Err(bad(format!(
                "{what} length {n} exceeds the {} bytes left in the file",
                self.remaining()
            )));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(1, what)?;
        let s = self.take(n, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
}

fn value_size_hint(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        _ => 4, // arrays: at least a type + a length
    }
}

fn read_value(c: &mut Cursor<'_>, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
    let what = key;
    Ok(match ty {
        0 => MetaValue::U64(c.u8(what)? as u64),
        1 => MetaValue::I64(c.u8(what)? as i8 as i64),
        2 => MetaValue::U64(u16::from_le_bytes(c.array(what)?) as u64),
        3 => MetaValue::I64(i16::from_le_bytes(c.array(what)?) as i64),
        4 => MetaValue::U64(c.u32(what)? as u64),
        5 => MetaValue::I64(i32::from_le_bytes(c.array(what)?) as i64),
        6 => MetaValue::F64(f32::from_le_bytes(c.array(what)?) as f64),
        7 => match c.u8(what)? {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => return Err(bad(format!("metadata {key}: invalid bool byte {b}"))),
        },
        8 => MetaValue::Str(c.string(what)?),
        9 => {
            if depth > 2 {
                return Err(bad(format!("metadata {key}: arrays nested too deeply")));
            }
            let elem_ty = c.u32(what)?;
            let n = c.len(value_size_hint(elem_ty), what)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem_ty, key, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(c.u64(what)?),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(what)?)),
        t => return Err(bad(format!("metadata {key}: unknown value type {t}"))),
    })
}

impl GgufFile {
    /// Memory-maps and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; the file must not be truncated by another process while
        // we serve it, the same contract every mmap-based model loader has.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Arc::new(map))
    }

    /// Parses GGUF bytes already in memory (used by tests and fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Arc::new(bytes))
    }

    fn parse(data: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<Self> {
        let buf: &[u8] = (*data).as_ref();
        let mut c = Cursor { buf, pos: 0 };
        if c.take(4, "magic")? != MAGIC {
            return Err(bad("bad magic (not a GGUF file)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("unsupported GGUF version {version} (supported: 2, 3)")));
        }
        let n_tensors = c.len(24, "tensor count")?;
        let n_kv = c.len(12, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let value = read_value(&mut c, ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| bad("general.alignment is not a power of two"))?,
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let type_id = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, type_id, offset));
        }
        let header_end = c.pos as u64;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, type_id, rel) in raw {
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| ModelError::UnsupportedTensorType {
                type_name: GgmlType::name_of_id(type_id),
                tensor: name.clone(),
            })?;
            let n: u64 = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor {name}: element count overflows")))?;
            if dims[0] % ggml_type.block_elems() as u64 != 0 {
                return Err(bad(format!(
                    "tensor {name}: row length {} is not a multiple of the {} block size {}",
                    dims[0],
                    ggml_type.name(),
                    ggml_type.block_elems()
                )));
            }
            let size = (n / ggml_type.block_elems() as u64)
                .checked_mul(ggml_type.block_bytes() as u64)
                .ok_or_else(|| bad(format!("tensor {name}: size overflows")))?;
            if rel % alignment != 0 {
                return Err(bad(format!("tensor {name}: offset {rel} not aligned to {alignment}")));
            }
            let start = data_start.checked_add(rel).ok_or_else(|| bad(format!("tensor {name}: offset overflows")))?;
            let end = start.checked_add(size).ok_or_else(|| bad(format!("tensor {name}: offset overflows")))?;
            if end > buf.len() as u64 {
                return Err(bad(format!(
                    "tensor {name}: data [{start}, {end}) lies past the end of the file ({} bytes): truncated?",
                    buf.len()
                )));
            }
            let info = TensorInfo { name: name.clone(), dims, ggml_type, offset: start as usize, size: size as usize };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(bad(format!("duplicate tensor {name}")));
            }
        }
        Ok(Self { version, metadata, tensors, data })
    }

    /// The bytes of one tensor (bounds were checked at parse time).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let buf: &[u8] = (*self.data).as_ref();
        &buf[info.offset..info.offset + info.size]
    }

    /// A shareable handle on the whole file's bytes, for weights that borrow from the map.
    pub fn data(&self) -> Arc<dyn AsRef<[u8]> + Send + Sync> {
        self.data.clone()
    }

    /// Metadata lookup.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Required unsigned metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(MetaValue::as_u64)
            .ok_or_else(|| ModelError::MissingOrInvalid(format!("metadata key {key}")))
    }

    /// Required float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(MetaValue::as_f64)
            .ok_or_else(|| ModelError::MissingOrInvalid(format!("metadata key {key}")))
    }

    /// Optional string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }
}

/// Writes a GGUF v3 file in memory: used by tests to build small valid (and corrupt) files.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    /// Adds a u32 metadata value.
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv.push((key.into(), 4, v.to_le_bytes().to_vec()));
        self
    }
    /// Adds an f32 metadata value.
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv.push((key.into(), 6, v.to_le_bytes().to_vec()));
        self
    }
    /// Adds a string metadata value.
    pub fn string(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = Vec::new();
        encode_str(&mut b, v);
        self.kv.push((key.into(), 8, b));
        self
    }
    /// Adds a string-array metadata value.
    pub fn strings(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for s in v {
            encode_str(&mut b, s);
        }
        self.kv.push((key.into(), 9, b));
        self
    }
    /// Adds a tensor with raw encoded data.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }
    /// Serialises the file.
    pub fn build(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            encode_str(&mut out, k);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            encode_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(ty.id()).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        while !(out.len() as u64).is_multiple_of(DEFAULT_ALIGNMENT) {
            out.push(0);
        }
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let data: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        GgufWriter::default()
            .string("general.architecture", "llama")
            .u32("llama.block_count", 2)
            .f32("llama.rope.freq_base", 10000.0)
            .strings("tokenizer.ggml.tokens", &["a", "b"])
            .tensor("t", &[4, 2], GgmlType::F32, data)
            .build()
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let f = GgufFile::from_bytes(sample()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.get_str("general.architecture"), Some("llama"));
        assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(f.get_f64("llama.rope.freq_base").unwrap(), 10000.0);
        let t = &f.tensors["t"];
        assert_eq!(t.dims, vec![4, 2]);
        let bytes = f.tensor_bytes(t);
        assert_eq!(f32::from_le_bytes(bytes[4..8].try_into().unwrap()), 1.0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample();
        for cut in 0..full.len() {
            let r = GgufFile::from_bytes(full[..cut].to_vec());
            assert!(r.is_err(), "truncated at {cut} parsed");
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let full = sample();
        for i in 0..full.len() {
            for v in [0u8, 0xff, 0x7f, 9] {
                let mut b = full.clone();
                b[i] = v;
                let _ = GgufFile::from_bytes(b);
            }
        }
    }

    #[test]
    fn version_2_parses_and_unknown_types_are_named() {
        let mut b = sample();
        b[4] = 2;
        assert_eq!(GgufFile::from_bytes(b).unwrap().version, 2);
        let data = vec![0u8; 64];
        let mut w = GgufWriter::default();
        w.tensor("blk.0.ffn_up.weight", &[256], GgmlType::Q4_K, data);
        let mut b = w.build();
        // The tensor type id (u32 after name and dims) is rewritten to Q2_K (10).
        let at = b.windows(4).position(|x| x == 12u32.to_le_bytes()).unwrap();
        b[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err().to_string();
        assert_eq!(e, "unsupported tensor type Q2_K in tensor blk.0.ffn_up.weight");
    }

    #[test]
    fn huge_length_fields_are_rejected_without_allocating() {
        let mut b = sample();
        // metadata count lives at bytes 16..24
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err().to_string();
        assert!(e.contains("metadata count"), "{e}");
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let mut b = sample();
        b[0] = b'X';
        assert!(GgufFile::from_bytes(b).unwrap_err().to_string().contains("magic"));
        let mut b = sample();
        b[4] = 9;
        assert!(GgufFile::from_bytes(b).unwrap_err().to_string().contains("version 9"));
    }
}
