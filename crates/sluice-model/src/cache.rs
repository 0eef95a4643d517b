//! Paged key/value memory: per layer, `num_blocks × block_size` rows of `n_kv_heads × head_dim`
//! values for keys and as many for values, stored as f32, half precision or 8-bit codes
//! ([`KvDtype`]). Keys are stored head by head within each block, each head's rows back to back
//! (a query's scores are dot products over a key's dimensions, and one attention task reads one
//! head's keys of a block as one contiguous run); values are stored transposed within each block
//! (dimension `d` of a block's positions is one run of `block_size` values), so each output of
//! the weighted sum is a dot product over positions with its accumulators in registers. Which
//! block holds which positions of which sequence is the caller's business (a block table per
//! sequence, from `sluice-kv`); the model only reads and writes through those tables. Memory is
//! reserved zeroed, so untouched blocks cost address space, not resident memory.
//!
//! With 8-bit codes every 32 consecutive dimensions of a row (one position of one head) share a
//! scale, for keys and values alike, so a new position is encoded on its own and never
//! re-encodes its neighbours (the values' transposed runs cross positions, not dimensions).
//! Keys are then laid out for byte dot products instead of row by row: within a block, each
//! head's codes come in runs of four dimensions, position after position (dimensions `4j..4j+4`
//! of the block's positions are `4 · block_size` consecutive bytes), stored plus 128 as
//! unsigned bytes; one 64-byte load then holds four dimensions of sixteen positions. The
//! scales are stored per block too, chunk after chunk (chunk `c`'s scales of the block's
//! positions one run of `block_size`), so an attention task loads them as it loads the codes.
//!
//! `KvCache` is the single-sequence convenience on top: its own blocks, in order.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::quant::Isa;

/// Dimensions sharing one scale in an 8-bit cache.
pub const Q8_CHUNK: usize = 32;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// 32-bit floats: the activations as computed.
    #[default]
    F32,
    /// IEEE half precision (rounded to nearest even): half the memory and bandwidth. Queries and
    /// attention weights are rounded to half precision too before they meet the cache, as in
    /// our reference (llama.cpp's default cache type).
    F16,
    /// 8-bit codes with one scale per 32 dimensions of a row, encoded as llama.cpp's `q8_0`
    /// cache type encodes (the half-precision scales kept as f32 for the kernels): 1.125 bytes
    /// per value, 56% of the half-precision cache.
    /// Attention then follows its own arithmetic (`attention_kernels::q8`), not the
    /// reference's: top logits move by up to about one, as between the reference's own f32
    /// and f16 caches. Needs a head width that is a multiple of 32 and blocks of a multiple of
    /// 8 positions ([`KvDtype::check`]).
    Q8_0,
}

impl KvDtype {
    /// Bytes one row of `kv_dim` values occupies (keys or values of one position and layer).
    pub fn row_bytes(self, kv_dim: usize) -> usize {
        match self {
            KvDtype::F32 => 4 * kv_dim,
            KvDtype::F16 => 2 * kv_dim,
            KvDtype::Q8_0 => kv_dim + 4 * kv_dim.div_ceil(Q8_CHUNK),
        }
    }

    /// `f32`, `f16` or `q8_0`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "q8_0" => Ok(KvDtype::Q8_0),
            other => Err(format!("unknown KV cache type {other:?} (expected f32, f16 or q8_0)")),
        }
    }

    /// Whether a model of this shape can use the type with blocks of `block_size` positions
    /// (8-bit codes: heads a whole number of 32-dimension chunks, blocks of a multiple of 8).
    pub fn check(self, cfg: &ModelConfig, block_size: usize) -> Result<()> {
        if self == KvDtype::Q8_0 && !cfg.head_dim.is_multiple_of(Q8_CHUNK) {
            return Err(ModelError::InvalidInput(format!(
                "the q8_0 KV cache needs a head width that is a multiple of {Q8_CHUNK}; this model's is {}",
                cfg.head_dim
            )));
        }
        if self == KvDtype::Q8_0 && !block_size.is_multiple_of(8) {
            return Err(ModelError::InvalidInput(format!("the q8_0 KV cache needs a block size that is a multiple of 8, not {block_size}")));
        }
        Ok(())
    }
}

/// One layer's keys or values.
#[derive(Debug)]
pub(crate) enum KvData {
    F32(Vec<f32>),
    /// Half-precision bit patterns.
    F16(Vec<u16>),
    /// 8-bit codes (keys plus 128, values as two's complement bytes), and one scale per 32
    /// dimensions of each row, per block chunk after chunk ([`q8_scale_at`]).
    Q8 { codes: Vec<u8>, scales: Vec<f32> },
}

impl KvData {
    fn zeroed(dtype: KvDtype, rows: usize, kv_dim: usize) -> Self {
        let n = rows * kv_dim;
        match dtype {
            KvDtype::F32 => KvData::F32(vec![0f32; n]),
            KvDtype::F16 => KvData::F16(vec![0u16; n]),
            KvDtype::Q8_0 => KvData::Q8 { codes: vec![0u8; n], scales: vec![0f32; rows * kv_dim.div_ceil(Q8_CHUNK)] },
        }
    }

    /// Stores a row's values `x`, value `i` at `at + i·stride` (the layout's business), and with
    /// 8-bit codes chunk `c`'s scale at `scale_at.0 + c·scale_at.1`.
    fn store(&mut self, isa: Isa, scale_at: (usize, usize), at: usize, stride: usize, x: &[f32]) {
        match self {
            KvData::F32(d) => x.iter().enumerate().for_each(|(i, &v)| d[at + i * stride] = v),
            KvData::F16(d) => {
                // Converted a chunk at a time (eight lanes at once), then placed.
                const CHUNK: usize = 64;
                let mut bits = [0u16; CHUNK];
                for (c, xs) in x.chunks(CHUNK).enumerate() {
                    let b = &mut bits[..xs.len()];
                    crate::vmath::to_half_bits(isa, xs, b);
                    let at = at + c * CHUNK * stride;
                    if stride == 1 {
                        d[at..at + b.len()].copy_from_slice(b);
                    } else {
                        b.iter().enumerate().for_each(|(i, &v)| d[at + i * stride] = v);
                    }
                }
            }
            KvData::Q8 { codes, scales } => {
                for (c, xs) in x.chunks(Q8_CHUNK).enumerate() {
                    let (scale, q) = encode_q8(xs);
                    scales[scale_at.0 + c * scale_at.1] = scale;
                    let at = at + c * Q8_CHUNK * stride;
                    q[..xs.len()].iter().enumerate().for_each(|(i, &v)| codes[at + i * stride] = v as u8);
                }
            }
        }
    }

    /// The whole layer as a read-only view.
    pub(crate) fn view(&self) -> KvView<'_> {
        match self {
            KvData::F32(d) => KvView::F32(d),
            KvData::F16(d) => KvView::F16(d),
            KvData::Q8 { codes, scales } => KvView::Q8 { codes, scales },
        }
    }
}

/// Where an 8-bit cache keeps the scale of chunk `c` (of 32 dimensions, counted over all heads)
/// of cache row `row`, blocks of `bs` rows of `kv_dim` values: per block, chunk after chunk,
/// each a run of the block's positions.
pub(crate) fn q8_scale_at(row: usize, c: usize, bs: usize, kv_dim: usize) -> usize {
    (row / bs * kv_dim.div_ceil(Q8_CHUNK) + c) * bs + row % bs
}

/// 32 values as 8-bit codes and their scale, `x ≈ scale · code`: exactly a `q8_0` block of
/// llama.cpp (the largest magnitude coded ±127, halves rounded to even, the scale rounded to
/// half precision), through the activation encoder (vectorized where the CPU allows).
pub(crate) fn encode_q8(x: &[f32]) -> (f32, [i8; Q8_CHUNK]) {
    debug_assert_eq!(x.len(), Q8_CHUNK);
    let mut block = [0u8; 2 + Q8_CHUNK];
    crate::quant::quantize_activation(crate::quant::GgmlType::Q8_0, x, &mut block);
    let scale = half::f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
    (scale, std::array::from_fn(|i| block[2 + i] as i8))
}

/// One layer's keys or values, read-only.
#[derive(Debug, Clone, Copy)]
pub enum KvView<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// Half-precision bit patterns.
    F16(&'a [u16]),
    /// 8-bit codes and their scales (see [`KvDtype::Q8_0`]).
    Q8 {
        /// The codes: values laid out as the floats of the other types (two's complement
        /// bytes); keys plus 128, in the block layout of the module header.
        codes: &'a [u8],
        /// One per 32 dimensions of each row, per block chunk after chunk: chunk `c` of the
        /// block holding row `row` at `(row / bs · kv_dim / 32 + c) · bs + row % bs`.
        scales: &'a [f32],
    },
}

impl KvView<'_> {
    /// Whether values are half precision.
    pub fn is_f16(&self) -> bool {
        matches!(self, KvView::F16(_))
    }

    /// Bytes per element (codes only, for 8-bit).
    pub fn elem_bytes(&self) -> usize {
        match self {
            KvView::F32(_) => 4,
            KvView::F16(_) => 2,
            KvView::Q8 { .. } => 1,
        }
    }

    /// The scales of an 8-bit cache.
    pub fn q8_scales(&self) -> Option<&[f32]> {
        match self {
            KvView::Q8 { scales, .. } => Some(scales),
            _ => None,
        }
    }

    /// Address of value `i` (not dereferenced here; callers stay in bounds).
    pub fn ptr(&self, i: usize) -> *const u8 {
        match self {
            KvView::F32(d) => d.as_ptr().wrapping_add(i) as *const u8,
            KvView::F16(d) => d.as_ptr().wrapping_add(i) as *const u8,
            KvView::Q8 { codes, .. } => codes.as_ptr().wrapping_add(i),
        }
    }
}

/// Keys and values of every block of one engine.
#[derive(Debug)]
pub struct PagedKv {
    pub(crate) k: Vec<KvData>,
    pub(crate) v: Vec<KvData>,
    pub(crate) block_size: usize,
    num_blocks: usize,
    dtype: KvDtype,
    head_dim: usize,
}

impl PagedKv {
    /// Memory for `num_blocks` blocks of `block_size` positions, stored as f32.
    pub fn new(cfg: &ModelConfig, num_blocks: usize, block_size: usize) -> Self {
        Self::with_dtype(cfg, num_blocks, block_size, KvDtype::F32)
    }

    /// Memory for `num_blocks` blocks of `block_size` positions, stored as `dtype`.
    pub fn with_dtype(cfg: &ModelConfig, num_blocks: usize, block_size: usize, dtype: KvDtype) -> Self {
        let rows = num_blocks * block_size.max(1);
        let kv_dim = cfg.kv_dim();
        Self {
            k: (0..cfg.n_layers).map(|_| KvData::zeroed(dtype, rows, kv_dim)).collect(),
            v: (0..cfg.n_layers).map(|_| KvData::zeroed(dtype, rows, kv_dim)).collect(),
            block_size: block_size.max(1),
            num_blocks,
            dtype,
            head_dim: cfg.head_dim,
        }
    }

    /// Bytes one block occupies (keys and values of every layer).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: KvDtype) -> usize {
        2 * cfg.n_layers * block_size * dtype.row_bytes(cfg.kv_dim())
    }

    /// How keys and values are stored.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Stores layer `layer`'s key row `k` and value row `v` of cache row `row` (keys head by
    /// head, or with 8-bit codes in their byte-dot layout; values transposed within the block).
    pub(crate) fn store_row(&mut self, isa: Isa, layer: usize, row: usize, k: &[f32], v: &[f32]) {
        let (bs, kv_dim, hd) = (self.block_size, k.len(), self.head_dim);
        if let KvData::Q8 { codes, scales } = &mut self.k[layer] {
            // Keys in the byte-dot layout (module header).
            let (block, p) = (row / bs * bs * kv_dim, row % bs);
            for (c, xs) in k.chunks(Q8_CHUNK).enumerate() {
                let (scale, q) = encode_q8(xs);
                scales[q8_scale_at(row, c, bs, kv_dim)] = scale;
                // A chunk lies within one head (head widths are whole chunks).
                let (h, d0) = (c * Q8_CHUNK / hd, c * Q8_CHUNK % hd);
                let head = &mut codes[block + h * hd * bs..block + (h + 1) * hd * bs];
                for (quad, v) in q[..xs.len()].chunks(4).enumerate() {
                    let at = ((d0 / 4 + quad) * bs + p) * 4;
                    head[at..at + v.len()].iter_mut().zip(v).for_each(|(b, &v)| *b = (v as u8) ^ 0x80);
                }
            }
        } else {
            // Head-major within the block (module header).
            let (block, p) = (row / bs * bs * kv_dim, row % bs);
            for (h, xs) in k.chunks(hd).enumerate() {
                self.k[layer].store(isa, (0, 0), block + (h * bs + p) * hd, 1, xs);
            }
        }
        let scales = (q8_scale_at(row, 0, bs, kv_dim), bs);
        self.v[layer].store(isa, scales, (row / bs) * bs * kv_dim + row % bs, bs, v);
    }

    /// Asks for the cache lines layer `layer` will store into for these rows (the row's block,
    /// for keys and values alike: both spread a row over it) ahead of the stores. A decode
    /// step writes one row per sequence, each in a block last touched a whole step ago and long
    /// since evicted: without the hint every store waits on its misses one after another.
    pub(crate) fn prefetch_rows(&self, layer: usize, kv_dim: usize, rows: impl Iterator<Item = usize>) {
        let (k, v) = (self.k[layer].view(), self.v[layer].view());
        let block_bytes = self.block_size * kv_dim * k.elem_bytes();
        let mut last_block = usize::MAX;
        for r in rows {
            let b = r / self.block_size;
            if b != last_block {
                let at = b * self.block_size * kv_dim;
                crate::mem::prefetch_l2(v.ptr(at), block_bytes);
                crate::mem::prefetch_l2(k.ptr(at), block_bytes);
                last_block = b;
            }
        }
    }

    /// Blocks available.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

/// One sequence's keys and values in blocks of its own (used by single-sequence callers).
#[derive(Debug)]
pub struct KvCache {
    pub(crate) paged: PagedKv,
    pub(crate) table: Vec<u32>,
    len: usize,
    capacity: usize,
}

const SINGLE_BLOCK: usize = 16;

impl KvCache {
    /// A cache for up to `capacity` positions, stored as f32.
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        Self::with_dtype(cfg, capacity, KvDtype::F32)
    }

    /// A cache for up to `capacity` positions, stored as `dtype`.
    pub fn with_dtype(cfg: &ModelConfig, capacity: usize, dtype: KvDtype) -> Self {
        let blocks = capacity.div_ceil(SINGLE_BLOCK).max(1);
        let paged = PagedKv::with_dtype(cfg, blocks, SINGLE_BLOCK, dtype);
        Self { paged, table: (0..blocks as u32).collect(), len: 0, capacity }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (e.g. to reuse a common prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn check_room(&self, n_new: usize) -> Result<()> {
        if self.len + n_new > self.capacity {
            return Err(ModelError::InvalidInput(format!(
                "{} cached + {} new positions exceed the cache capacity {}",
                self.len, n_new, self.capacity
            )));
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
