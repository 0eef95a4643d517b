//! Weight matrices in their file encoding, and the matrix products of the forward pass.
//!
//! A `QMatrix` borrows its bytes from the memory-mapped file (or an owned buffer for converted
//! weights); rows stay encoded. `matmul` encodes each activation row once into the weight's
//! `dot_type`, then splits the output rows across the thread pool; each task walks a small
//! band of weight rows (kept in L1) against every activation row.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::quant::{self, GgmlType, Isa, Numerics, intsum, packed};

/// Shared, immutable bytes (a memory map or an owned buffer).
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A `rows × cols` matrix, row-major, each row encoded as `ty`.
#[derive(Clone)]
pub struct QMatrix {
    /// Encoding.
    pub ty: GgmlType,
    /// Output features (rows).
    pub rows: usize,
    /// Input features (row length).
    pub cols: usize,
    data: Bytes,
    offset: usize,
    /// The rows interleaved for the packed kernel (`quant::packed`), where this CPU has it
    /// (an `Arc<Vec>`: converting the buffer to `Arc<[u8]>` would copy it, doubling the load's
    /// peak memory for a large matrix).
    packed: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} {}x{})", self.ty.name(), self.rows, self.cols)
    }
}

impl QMatrix {
    /// Wraps `rows × cols` elements of `ty` starting at `offset` in `data`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Bytes, offset: usize, name: &str) -> Result<Self> {
        let need = rows
            .checked_mul(ty.row_bytes(cols))
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| ModelError::MissingOrInvalid(format!("tensor {name} size")))?;
        if !ty.is_weight_type() {
            return Err(ModelError::UnsupportedTensorType { type_name: ty.name().into(), tensor: name.into() });
        }
        if !cols.is_multiple_of(ty.block_elems()) || need > (*data).as_ref().len() {
            return Err(ModelError::MissingOrInvalid(format!("tensor {name} shape")));
        }
        let mut m = Self { ty, rows, cols, data, offset, packed: None };
        if packed::packable(quant::detect_isa(), ty, rows) {
            // The kernels read only the packed copy: let the file's pages go as rows are packed,
            // so the weights are resident once, also while loading (they come back from the page
            // cache if a row is read again).
            let (bytes, rb) = ((*m.data).as_ref(), ty.row_bytes(cols));
            let mut released = 0;
            let p = packed::pack(ty, rows, cols, |r| m.row(r), |done| {
                crate::mem::release_pages(&bytes[offset + released * rb..offset + done * rb]);
                released = done;
            });
            m.packed = Some(Arc::new(p));
        }
        Ok(m)
    }

    /// A matrix from f32 values (used for converted weights and tests).
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { ty: GgmlType::F32, rows, cols, data: Arc::new(bytes), offset: 0, packed: None }
    }

    /// The encoded bytes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.cols);
        let start = self.offset + r * rb;
        &(*self.data).as_ref()[start..start + rb]
    }

    /// Decodes row `r` into `out` (length `cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        quant::dequantize(self.ty, self.row(r), out);
    }

    /// Bytes the matrix occupies.
    pub fn byte_size(&self) -> usize {
        self.rows * self.ty.row_bytes(self.cols)
    }
}

/// A raw pointer that tasks writing disjoint elements of one output buffer may share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint set of indices (its own band of output columns).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Element `i` (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(i) }
    }

    /// Writes `v` to elements `i..i + v.len()` (one block copy, not element by element).
    ///
    /// # Safety
    /// The elements are in the buffer and no other task writes them.
    pub(crate) unsafe fn write(self, i: usize, v: &[f32]) {
        // SAFETY: the caller's contract; `v` is a distinct, live slice.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.at(i), v.len()) };
    }
}

/// Output rows per task: small enough to spread over the threads, large enough to amortize.
fn band_rows(rows: usize) -> usize {
    (rows / (rayon::current_num_threads() * 8)).clamp(4, 64)
}

/// `out[t][r] = Σ_c w[r][c] * x[t][c]` for `n_tok` activation rows `x` (`n_tok × cols`, row-major),
/// `out` is `n_tok × w.rows`, rounded as `numerics` says.
pub fn matmul(isa: Isa, numerics: Numerics, w: &QMatrix, x: &[f32], out: &mut [f32]) {
    matmul_many(isa, numerics, &[w], x, &mut [out]);
}

/// [`matmul`] of several matrices over the same input (`ws[i]` into `outs[i]`, e.g. a layer's
/// query, key and value projections): where they share a column count and an activation
/// encoding, the input is encoded once and one parallel pass covers every matrix's rows (one
/// wait for the threads instead of one per matrix).
pub fn matmul_many(isa: Isa, numerics: Numerics, ws: &[&QMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
    debug_assert_eq!(ws.len(), outs.len());
    let Some(w0) = ws.first() else { return };
    if ws.iter().any(|w| w.cols != w0.cols || w.ty.dot_type() != w0.ty.dot_type()) {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_many(isa, numerics, &[w], x, &mut [&mut **out]);
        }
        return;
    }
    let n_tok = x.len() / w0.cols;
    debug_assert_eq!(x.len(), n_tok * w0.cols);
    let dt = w0.ty.dot_type();
    let arb = dt.row_bytes(w0.cols);
    let mut xq = vec![0u8; n_tok * arb];
    // Encoding a few rows costs less than waking the threads.
    if n_tok >= 4 {
        xq.par_chunks_mut(arb)
            .zip(x.par_chunks(w0.cols))
            .for_each(|(q, xr)| quant::quantize_activation(dt, xr, q));
    } else {
        for (q, xr) in xq.chunks_exact_mut(arb).zip(x.chunks_exact(w0.cols)) {
            quant::quantize_activation(dt, xr, q);
        }
    }
    let plans: Vec<Bands<'_>> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, out)| {
            debug_assert_eq!(out.len(), n_tok * w.rows);
            let ptr = OutPtr(out.as_mut_ptr());
            match w.packed.as_deref().map(Vec::as_slice).filter(|_| isa == Isa::Avx512Vnni) {
                Some(p) if numerics == Numerics::Fast => plan_intsum(isa, w, p, &xq, ptr),
                Some(p) => plan_packed(isa, w, p, &xq, ptr),
                None => plan_rows(isa, w, &xq, ptr),
            }
        })
        .collect();
    let starts: Vec<usize> = plans.iter().scan(0, |acc, p| Some(std::mem::replace(acc, *acc + p.count))).collect();
    let total: usize = plans.iter().map(|p| p.count).sum();
    (0..total).into_par_iter().for_each(|j| {
        let i = starts.partition_point(|&s| s <= j) - 1;
        (plans[i].run)(j - starts[i]);
    });
}

/// One matrix product's parallel work: `count` tasks, each writing its own band of output
/// columns through the shared output pointer.
struct Bands<'a> {
    count: usize,
    run: Box<dyn Fn(usize) + Sync + 'a>,
}

/// The row kernels' work (weights in file layout): bands of rows, four tokens at a time.
fn plan_rows<'a>(isa: Isa, w: &'a QMatrix, xq: &'a [u8], ptr: OutPtr) -> Bands<'a> {
    let arb = w.ty.dot_type().row_bytes(w.cols);
    let n_tok = xq.len() / arb;
    // Q4_1: the activations' block scales as floats, once here rather than per weight-row pair.
    let scale_len = 2 * (w.cols / 32);
    let mut scales = Vec::new();
    if w.ty == GgmlType::Q4_1 && n_tok >= 4 {
        scales = vec![0f32; n_tok * scale_len];
        for (t, sc) in scales.chunks_exact_mut(scale_len).enumerate() {
            quant::q8_1_scales(&xq[t * arb..(t + 1) * arb], sc);
        }
    }
    let rows = w.rows;
    let band = band_rows(rows);
    let run = move |b: usize| {
        let (r0, r1) = (b * band, ((b + 1) * band).min(rows));
        let act = |t: usize| &xq[t * arb..(t + 1) * arb];
        let mut t = 0;
        // Four tokens at a time: each weight block is decoded once for all four.
        while t + 4 <= n_tok {
            let acts = [act(t), act(t + 1), act(t + 2), act(t + 3)];
            let mut r = r0;
            // Two rows × four tokens per tile: each activation block is loaded once per pair.
            let sc = |k: usize| scales.get((t + k) * scale_len..(t + k + 1) * scale_len).unwrap_or(&[]);
            while r + 2 <= r1 {
                let v = if scales.is_empty() {
                    quant::vec_dot_2x4(isa, w.ty, w.cols, [w.row(r), w.row(r + 1)], acts)
                } else {
                    quant::vec_dot_2x4_q4_1(isa, w.cols, [w.row(r), w.row(r + 1)], acts, [sc(0), sc(1), sc(2), sc(3)])
                };
                for (dr, row) in v.into_iter().enumerate() {
                    for (k, v) in row.into_iter().enumerate() {
                        // SAFETY: index (t+k)*rows + r+dr is in bounds (debug-asserted sizes)
                        // and only this band writes columns r0..r1.
                        unsafe { *ptr.at((t + k) * rows + r + dr) = v };
                    }
                }
                r += 2;
            }
            if r < r1 {
                let v = quant::vec_dot_x4(isa, w.ty, w.cols, w.row(r), acts);
                for (k, v) in v.into_iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { *ptr.at((t + k) * rows + r) = v };
                }
            }
            t += 4;
        }
        for t in t..n_tok {
            for r in r0..r1 {
                let v = quant::vec_dot(isa, w.ty, w.cols, w.row(r), act(t));
                // SAFETY: as above.
                unsafe { *ptr.at(t * rows + r) = v };
            }
        }
    };
    Bands { count: rows.div_ceil(band), run: Box::new(run) }
}

/// What the packed kernels take per activation row besides its bytes, computed once per product:
/// the block scales as floats (Q4_1: d and s per block; the others: d) and, for the types
/// without mins, `off_len` offsets per row from `offsets`.
struct RowExtras {
    scales: Vec<f32>,
    scale_len: usize,
    offsets: Vec<i32>,
    off_len: usize,
}

impl RowExtras {
    fn new(ty: GgmlType, xq: &[u8], arb: usize, off_len: usize, offsets: fn(&[u8], i32, &mut [i32])) -> Self {
        let (n_tok, nb) = (xq.len() / arb, arb / ty.dot_type().block_bytes());
        let mins = ty == GgmlType::Q4_1;
        let (scale_len, off_len) = if mins { (2 * nb, 0) } else { (nb, off_len) };
        let mut e = Self { scales: vec![0f32; n_tok * scale_len], scale_len, offsets: vec![0i32; n_tok * off_len], off_len };
        for (t, a) in xq.chunks_exact(arb).enumerate() {
            let sc = &mut e.scales[t * scale_len..(t + 1) * scale_len];
            if mins {
                quant::q8_1_scales(a, sc);
            } else {
                packed::q8_0_scales(a, sc);
                offsets(a, packed::bias(ty), &mut e.offsets[t * off_len..(t + 1) * off_len]);
            }
        }
        e
    }

    fn scales(&self, t: usize) -> &[f32] {
        &self.scales[t * self.scale_len..(t + 1) * self.scale_len]
    }

    fn offsets(&self, t: usize) -> &[i32] {
        &self.offsets[t * self.off_len..(t + 1) * self.off_len]
    }
}

/// The work over a packed matrix: each task takes a band of row groups and runs every group
/// against the activation rows two at a time (the group's bytes stay in L1 meanwhile).
fn plan_packed<'a>(isa: Isa, w: &'a QMatrix, p: &'a [u8], xq: &'a [u8], ptr: OutPtr) -> Bands<'a> {
    let (rows, cols, nb) = (w.rows, w.cols, w.cols / 32);
    let arb = w.ty.dot_type().row_bytes(cols);
    let n_tok = xq.len() / arb;
    let (q4_1, nibbles) = (w.ty == GgmlType::Q4_1, w.ty == GgmlType::Q4_0);
    // Q8_0-style types: the offsets of each 4-value chunk (eight per block).
    let extras = RowExtras::new(w.ty, xq, arb, 8 * nb, packed::q8_0_offsets);
    let groups = rows / packed::PACK_ROWS;
    let band = band_rows(rows).div_ceil(packed::PACK_ROWS);
    let run = move |b: usize| {
        let act = |t: usize| &xq[t * arb..(t + 1) * arb];
        let (sc, off) = (|t| extras.scales(t), |t| extras.offsets(t));
        let store = |g: usize, t: usize, v: &[f32; packed::PACK_ROWS]| {
            // SAFETY: indices t*rows + g*8.. +8 are in bounds (debug-asserted sizes) and only
            // this band writes the columns of its groups.
            unsafe { ptr.write(t * rows + g * packed::PACK_ROWS, v) };
        };
        for g in b * band..((b + 1) * band).min(groups) {
            let grp = packed::group(p, w.ty, cols, g);
            let mut t = 0;
            while t + 2 <= n_tok {
                let (a, s) = ([act(t), act(t + 1)], [sc(t), sc(t + 1)]);
                let v = if q4_1 {
                    packed::dot_group_q4_1::<2>(isa, cols, grp, a, s)
                } else {
                    packed::dot_group_q8_0::<2>(nibbles, isa, cols, grp, a, s, [off(t), off(t + 1)])
                };
                debug_assert!(v.is_some(), "packed kernel refused its inputs");
                for (k, v) in v.iter().flatten().enumerate() {
                    store(g, t + k, v);
                }
                t += 2;
            }
            if t < n_tok {
                let v = if q4_1 {
                    packed::dot_group_q4_1::<1>(isa, cols, grp, [act(t)], [sc(t)])
                } else {
                    packed::dot_group_q8_0::<1>(nibbles, isa, cols, grp, [act(t)], [sc(t)], [off(t)])
                };
                debug_assert!(v.is_some(), "packed kernel refused its inputs");
                if let Some([v]) = &v {
                    store(g, t, v);
                }
            }
        }
    };
    Bands { count: groups.div_ceil(band), run: Box::new(run) }
}

/// The work over a packed matrix with the fast numerics (`quant::intsum`): each task takes a
/// band of row-group pairs and runs each pair against the activation rows four at a time
/// (leftover rows and an odd last group one at a time, bit-equal).
fn plan_intsum<'a>(isa: Isa, w: &'a QMatrix, p: &'a [u8], xq: &'a [u8], ptr: OutPtr) -> Bands<'a> {
    const PR: usize = packed::PACK_ROWS;
    let (rows, cols, nb) = (w.rows, w.cols, w.cols / 32);
    let arb = w.ty.dot_type().row_bytes(cols);
    let n_tok = xq.len() / arb;
    // Types without mins: one offset per block.
    let extras = RowExtras::new(w.ty, xq, arb, nb, intsum::block_offsets);
    let groups = rows / PR;
    let band = band_rows(rows).div_ceil(PR).next_multiple_of(2);
    let run = move |b: usize| {
        let act = |t: usize| &xq[t * arb..(t + 1) * arb];
        let (sc, off) = (|t| extras.scales(t), |t| extras.offsets(t));
        let store = |row0: usize, t: usize, v: &[f32]| {
            // SAFETY: indices t*rows + row0.. + v.len() are in bounds (debug-asserted sizes)
            // and only this band writes the columns of its groups.
            unsafe { ptr.write(t * rows + row0, v) };
        };
        let one = |g: usize, t: usize| {
            let v = intsum::group::<1>(isa, w.ty, cols, packed::group(p, w.ty, cols, g), [act(t)], [sc(t)], [off(t)]);
            debug_assert!(v.is_some(), "intsum kernel refused its inputs");
            if let Some([v]) = &v {
                store(g * PR, t, v);
            }
        };
        let (first, end) = (b * band, ((b + 1) * band).min(groups));
        let mut g = first;
        while g + 2 <= end {
            let pair = [packed::group(p, w.ty, cols, g), packed::group(p, w.ty, cols, g + 1)];
            let mut t = 0;
            while t + intsum::TOKENS <= n_tok {
                let ts: [usize; intsum::TOKENS] = std::array::from_fn(|k| t + k);
                let v = intsum::group_pair(isa, w.ty, cols, pair, ts.map(act), ts.map(sc), ts.map(off));
                debug_assert!(v.is_some(), "intsum kernel refused its inputs");
                for (k, v) in v.iter().flatten().enumerate() {
                    store(g * PR, t + k, v);
                }
                t += intsum::TOKENS;
            }
            for t in t..n_tok {
                one(g, t);
                one(g + 1, t);
            }
            g += 2;
        }
        for g in g..end {
            for t in 0..n_tok {
                one(g, t);
            }
        }
    };
    Bands { count: groups.div_ceil(band), run: Box::new(run) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q4_0, Q4_1, Q5_0 or Q8_0 matrix of pseudo-random quants with small positive scales (and, for
    /// Q4_1, mixed-sign mins).
    fn matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut bytes = vec![0u8; rows * ty.row_bytes(cols)];
        for blk in bytes.chunks_exact_mut(ty.block_bytes()) {
            let d = half::f16::from_f32(0.002 + (next() % 1000) as f32 * 1e-5);
            let m = half::f16::from_f32(((next() % 2000) as f32 - 1000.0) * 2e-5);
            blk[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
            if ty == GgmlType::Q4_1 {
                blk[2..4].copy_from_slice(&m.to_bits().to_le_bytes());
                blk[4..].iter_mut().for_each(|b| *b = next() as u8);
            } else if matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0) {
                blk[2..].iter_mut().for_each(|b| *b = next() as u8);
            } else {
                // Q8_0 weights span -127..=127, as a quantizer makes them.
                blk[2..].iter_mut().for_each(|b| *b = ((next() % 255) as i32 - 127) as i8 as u8);
            }
        }
        QMatrix::new(ty, rows, cols, Arc::new(bytes), 0, "w").unwrap()
    }

    #[test]
    fn packed_matmul_is_bit_equal_to_the_row_kernels() {
        for (ty, n_tok) in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0].into_iter().flat_map(|ty| (1..=5).map(move |n| (ty, n))) {
            let (rows, cols) = (40, 160);
            let w = matrix(ty, rows, cols);
            let isa = quant::detect_isa();
            assert_eq!(w.packed.is_some(), isa == Isa::Avx512Vnni, "packed exactly where the kernel runs");
            let x: Vec<f32> = (0..n_tok * cols).map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 2.3).collect();
            let mut fast = vec![0f32; n_tok * rows];
            matmul(isa, Numerics::Reference, &w, &x, &mut fast);
            let dt = ty.dot_type();
            let mut xq = vec![0u8; dt.row_bytes(cols)];
            for t in 0..n_tok {
                quant::quantize_activation(dt, &x[t * cols..(t + 1) * cols], &mut xq);
                for r in 0..rows {
                    let want = quant::scalar::vec_dot(ty, cols, w.row(r), &xq);
                    let got = fast[t * rows + r];
                    assert_eq!(got.to_bits(), want.to_bits(), "{ty:?} n_tok {n_tok}, token {t}, row {r}: {got} vs {want}");
                }
            }
        }
    }

    /// Several products in one pass (shared encoding, one band list) give what separate
    /// products give, also when the matrices differ in type or width (then run one by one).
    #[test]
    fn fused_products_equal_separate_ones() {
        let isa = quant::detect_isa();
        let same = [matrix(GgmlType::Q4_1, 40, 160), matrix(GgmlType::Q4_1, 24, 160), matrix(GgmlType::Q4_1, 8, 160)];
        let mixed = [matrix(GgmlType::Q4_1, 40, 160), matrix(GgmlType::Q8_0, 16, 160), matrix(GgmlType::Q4_0, 24, 96)];
        for ws in [&same, &mixed] {
            for numerics in [Numerics::Reference, Numerics::Fast] {
                for n_tok in [1, 5, 8] {
                    let x = |cols: usize| -> Vec<f32> { (0..n_tok * cols).map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 1.7).collect() };
                    let mut want: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; n_tok * w.rows]).collect();
                    for (w, o) in ws.iter().zip(&mut want) {
                        matmul(isa, numerics, w, &x(w.cols), o);
                    }
                    // The fused call takes one input: give every matrix the first one's width.
                    let cols = ws[0].cols;
                    let fusable: Vec<&QMatrix> = ws.iter().filter(|w| w.cols == cols).collect();
                    let mut got: Vec<Vec<f32>> = fusable.iter().map(|w| vec![f32::NAN; n_tok * w.rows]).collect();
                    let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                    matmul_many(isa, numerics, &fusable, &x(cols), &mut outs);
                    for (i, g) in got.iter().enumerate() {
                        let w = &want[ws.iter().position(|m| std::ptr::eq(m, fusable[i])).unwrap()];
                        assert_eq!(g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{numerics:?} n_tok {n_tok} matrix {i}");
                    }
                }
            }
        }
    }

    /// The fast numerics: every path (paired groups four tokens at a time, leftover tokens, an
    /// odd last group) gives `intsum::dot` bit for bit, whatever the batch size, and stays within
    /// float rounding of the reference arithmetic.
    #[test]
    fn fast_matmul_is_bit_equal_to_its_definition_at_every_batch_size() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            // Five row groups: two pairs and an odd one, in bands of one pair (or more).
            let (rows, cols) = (40, 160);
            let w = matrix(ty, rows, cols);
            let isa = quant::detect_isa();
            for n_tok in 1..=9 {
                let x: Vec<f32> = (0..n_tok * cols).map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 2.3).collect();
                let (mut fast, mut reference) = (vec![0f32; n_tok * rows], vec![0f32; n_tok * rows]);
                matmul(isa, Numerics::Fast, &w, &x, &mut fast);
                matmul(isa, Numerics::Reference, &w, &x, &mut reference);
                let dt = ty.dot_type();
                let mut xq = vec![0u8; dt.row_bytes(cols)];
                for t in 0..n_tok {
                    quant::quantize_activation(dt, &x[t * cols..(t + 1) * cols], &mut xq);
                    for r in 0..rows {
                        let i = t * rows + r;
                        let want = if isa == Isa::Avx512Vnni { intsum::dot(ty, cols, w.row(r), &xq) } else { reference[i] };
                        assert_eq!(fast[i].to_bits(), want.to_bits(), "{ty:?} n_tok {n_tok}, token {t}, row {r}: {} vs {want}", fast[i]);
                        let tol = 1e-5 * (1.0 + reference[i].abs());
                        assert!((fast[i] - reference[i]).abs() <= tol, "{ty:?} row {r}: fast {} vs reference {}", fast[i], reference[i]);
                    }
                }
            }
        }
    }
}
