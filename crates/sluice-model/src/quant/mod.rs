//! Tensor encodings (ggml's block formats) and the CPU kernels that use them.
//!
//! Weights stay in their file encoding in memory (borrowed from the memory map). A matrix-vector
//! product quantizes the activation row once into the weight type's partner format (`dot_type`,
//! as ggml does: Q8_1 for Q4_1, Q8_K for the K-quants, ...) and runs an integer dot product per
//! weight row. `scalar` holds reference kernels for every type; `avx2` the fast paths, chosen at
//! run time and tested against the scalar ones.

pub mod intsum;
pub mod packed;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use half::{bf16, f16};

/// Number of elements in one K-quant super-block.
pub const QK_K: usize = 256;

/// A tensor element encoding (ids are ggml's).
#[expect(non_camel_case_types, reason = "ggml's type names, kept for recognisability")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, 32-element blocks, scale only.
    Q4_0,
    /// 4-bit, 32-element blocks, scale and min.
    Q4_1,
    /// 5-bit, 32-element blocks, scale only.
    Q5_0,
    /// 5-bit, 32-element blocks, scale and min.
    Q5_1,
    /// 8-bit, 32-element blocks, scale only.
    Q8_0,
    /// 8-bit, 32-element blocks, scale and scaled sum (activations only).
    Q8_1,
    /// 4-bit K-quant, 256-element super-blocks.
    Q4_K,
    /// 5-bit K-quant.
    Q5_K,
    /// 6-bit K-quant.
    Q6_K,
    /// 8-bit K-quant (activations only).
    Q8_K,
}

impl GgmlType {
    /// Maps a ggml type id; `None` for types we do not implement.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// The ggml name of a type id, including types we do not implement (for error messages).
    pub fn name_of_id(id: u32) -> String {
        if let Some(t) = Self::from_id(id) {
            return t.name().to_string();
        }
        let known = [
            (4, "Q4_2"), (5, "Q4_3"), (10, "Q2_K"), (11, "Q3_K"), (16, "IQ2_XXS"), (17, "IQ2_XS"),
            (18, "IQ3_XXS"), (19, "IQ1_S"), (20, "IQ4_NL"), (21, "IQ3_S"), (22, "IQ2_S"), (23, "IQ4_XS"),
            (24, "I8"), (25, "I16"), (26, "I32"), (27, "I64"), (28, "F64"), (29, "IQ1_M"), (34, "TQ1_0"),
            (35, "TQ2_0"), (39, "MXFP4"),
        ];
        known.iter().find(|(i, _)| *i == id).map(|(_, n)| n.to_string()).unwrap_or_else(|| format!("#{id}"))
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::BF16 => 30,
        }
    }

    /// The ggml name, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Q8_K => "Q8_K",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q8_K => 292,
        }
    }

    /// Bytes of a row of `n` elements (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }

    /// The format activations are converted to before a dot product with this weight type.
    pub fn dot_type(self) -> Self {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => Self::F32,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => Self::Q8_0,
            Self::Q4_1 | Self::Q5_1 => Self::Q8_1,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => Self::Q8_K,
            Self::Q8_1 | Self::Q8_K => self,
        }
    }

    /// Whether this type can hold model weights (the Q8_1 / Q8_K formats are activation-only).
    pub fn is_weight_type(self) -> bool {
        !matches!(self, Self::Q8_1 | Self::Q8_K)
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Decodes `out.len()` elements of `ty` from `src` (which holds exactly that many).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), ty.row_bytes(out.len()));
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        _ => {
            let be = ty.block_elems();
            for (blk, o) in src.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(be)) {
                scalar::dequantize_block(ty, blk, o);
            }
        }
    }
}

/// Encodes `x` (a multiple of the block size) as `ty` into `out` (`ty.row_bytes(x.len())` bytes).
/// Supports the activation formats (F32, Q8_0, Q8_1, Q8_K).
pub fn quantize_activation(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), ty.row_bytes(x.len()));
    match ty {
        GgmlType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K => {
            let be = ty.block_elems();
            let fast = detect_isa().has_avx2();
            for (blk, xs) in out.chunks_exact_mut(ty.block_bytes()).zip(x.chunks_exact(be)) {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: AVX2/FMA/F16C were detected.
                    unsafe { scalar::quantize_block_avx2(ty, xs, blk) };
                    continue;
                }
                let _ = fast;
                scalar::quantize_block(ty, xs, blk);
            }
        }
        _ => debug_assert!(false, "not an activation type: {ty:?}"),
    }
}

/// How the quantized matrix products round (the integer products are exact either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numerics {
    /// llama.cpp's reference CPU arithmetic, bit for bit: eight float lanes per block and row.
    /// Greedy outputs reproduce the reference's token for token.
    #[default]
    Reference,
    /// With AVX-512 VNNI: each block's integer dot product summed whole, then one float
    /// multiply-add (`intsum`), about 1.6x the batched matrix throughput. Results differ from
    /// the reference by float rounding, which the 8-bit activation encoding amplifies (a value
    /// near a rounding boundary lands on the other side): logits move by up to ~1 and greedy
    /// outputs part from the reference's now and then, as two builds of llama.cpp do.
    /// Without AVX-512 VNNI the same as `Reference`.
    Fast,
}

impl Numerics {
    /// Parses `fast` or `reference` (flags and config files).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "fast" => Ok(Self::Fast),
            "reference" => Ok(Self::Reference),
            _ => Err(format!("unknown numerics {s:?} (expected fast or reference)")),
        }
    }
}

/// Which kernel family the process uses, decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable scalar code.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels using AVX-512 VNNI byte dot products.
    Avx512Vnni,
}

impl Isa {
    /// Whether AVX2 + FMA + F16C code may run.
    pub fn has_avx2(self) -> bool {
        matches!(self, Self::Avx2 | Self::Avx512Vnni)
    }
}

/// The best kernel family this CPU supports (detected once).
pub fn detect_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(detect_isa_uncached)
}

fn detect_isa_uncached() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512Vnni;
            }
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// Dot products of one weight row with four activation rows (results bit-equal to four
/// `vec_dot` calls, faster where a multi-row kernel exists).
#[inline]
pub fn vec_dot_x4(isa: Isa, wt: GgmlType, n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: these `Isa` values are only produced by `detect_isa` after checking the features.
        let fast = match isa {
            Isa::Avx512Vnni => unsafe { x86::avx512vnni::dot_rows::<4>(wt, n, w, a) },
            Isa::Avx2 => unsafe { x86::avx2::dot_rows::<4>(wt, n, w, a) },
            Isa::Scalar => None,
        };
        if let Some(v) = fast {
            return v;
        }
    }
    a.map(|row| vec_dot(isa, wt, n, w, row))
}

/// Dot products of two weight rows with four activation rows: `out[k][t]` is row `k` against
/// activation `t`, bit-equal to `vec_dot`.
#[inline]
pub fn vec_dot_2x4(isa: Isa, wt: GgmlType, n: usize, w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: these `Isa` values are only produced by `detect_isa` after checking the features.
        let fast = match isa {
            Isa::Avx512Vnni => unsafe { x86::avx512vnni::dot_tile::<4>(wt, n, w, a) },
            Isa::Avx2 => unsafe { x86::avx2::dot_tile::<4>(wt, n, w, a) },
            Isa::Scalar => None,
        };
        if let Some(v) = fast {
            return v;
        }
    }
    w.map(|row| vec_dot_x4(isa, wt, n, row, a))
}

/// The block scales (d, s) of an activation row encoded as Q8_1, as floats: what the Q4_1 tile
/// would otherwise convert from f16 for every pair of weight rows.
pub fn q8_1_scales(a: &[u8], out: &mut [f32]) {
    for (blk, o) in a.chunks_exact(36).zip(out.chunks_exact_mut(2)) {
        o[0] = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        o[1] = f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32();
    }
}

/// [`vec_dot_2x4`] for Q4_1 weights, with the four activation rows' scales from
/// [`q8_1_scales`]. Same results.
#[inline]
pub fn vec_dot_2x4_q4_1(isa: Isa, n: usize, w: [&[u8]; 2], a: [&[u8]; 4], sc: [&[f32]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: these `Isa` values are only produced by `detect_isa` after checking the features.
        let fast = match isa {
            Isa::Avx512Vnni => unsafe { x86::avx512vnni::dot_tile_q4_1::<4>(n, w, a, sc) },
            Isa::Avx2 => unsafe { x86::avx2::dot_tile_q4_1::<4>(n, w, a, sc) },
            Isa::Scalar => None,
        };
        if let Some(v) = fast {
            return v;
        }
    }
    let _ = sc;
    vec_dot_2x4(isa, GgmlType::Q4_1, n, w, a)
}

/// Dot product of one weight row (`n` elements of `wt`) with an activation row already encoded
/// in `wt.dot_type()`.
#[inline]
pub fn vec_dot(isa: Isa, wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(w.len(), wt.row_bytes(n));
    debug_assert_eq!(a.len(), wt.dot_type().row_bytes(n));
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: these `Isa` values are only produced by `detect_isa` after checking the features.
        let fast = match isa {
            Isa::Avx512Vnni => unsafe { x86::avx512vnni::dot_rows::<1>(wt, n, w, [a]) },
            Isa::Avx2 => unsafe { x86::avx2::dot_rows::<1>(wt, n, w, [a]) },
            Isa::Scalar => None,
        };
        if let Some([v]) = fast {
            return v;
        }
    }
    let _ = isa;
    scalar::vec_dot(wt, n, w, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A weight row with sane (finite, small) f16 scales.
    fn weight_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let mut w = bytes(ty.row_bytes(n), seed);
        let scale_offsets: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[],
        };
        for blk in w.chunks_exact_mut(ty.block_bytes()) {
            for &o in scale_offsets {
                let v = half::f16::from_f32(0.001 + (blk[o + 1] as f32) / 25_000.0);
                blk[o..o + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        w
    }

    #[test]
    fn kernels_match_dequantized_dot_and_simd_matches_scalar_bit_for_bit() {
        let n = 512;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.7).collect();
        let isa = detect_isa();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            for seed in 1..6 {
                let w = weight_row(ty, n, seed);
                let dt = ty.dot_type();
                let mut xq = vec![0u8; dt.row_bytes(n)];
                quantize_activation(dt, &x, &mut xq);
                let mut wf = vec![0f32; n];
                dequantize(ty, &w, &mut wf);
                let mut xf = vec![0f32; n];
                dequantize(dt, &xq, &mut xf);
                let exact: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scalar = scalar::vec_dot(ty, n, &w, &xq);
                // Every kernel family this CPU can run, against the scalar reference.
                let families = [isa, if isa.has_avx2() { Isa::Avx2 } else { isa }];
                let fast = vec_dot(isa, ty, n, &w, &xq);
                for isa in families {
                    let one = vec_dot(isa, ty, n, &w, &xq);
                    assert_eq!(one.to_bits(), scalar.to_bits(), "{ty:?} {isa:?}: {one} vs scalar {scalar}");
                    let x4 = vec_dot_x4(isa, ty, n, &w, [&xq, &xq, &xq, &xq]);
                    assert!(x4.iter().all(|v| v.to_bits() == fast.to_bits()), "{ty:?} {isa:?}: x4 {x4:?} vs {fast}");
                    let tile = vec_dot_2x4(isa, ty, n, [&w, &w], [&xq, &xq, &xq, &xq]);
                    assert!(tile.iter().flatten().all(|v| v.to_bits() == fast.to_bits()), "{ty:?} {isa:?}: 2x4 {tile:?}");
                    if ty == GgmlType::Q4_1 {
                        let mut sc = vec![0f32; 2 * (n / 32)];
                        q8_1_scales(&xq, &mut sc);
                        let tile = vec_dot_2x4_q4_1(isa, n, [&w, &w], [&xq, &xq, &xq, &xq], [&sc, &sc, &sc, &sc]);
                        assert!(tile.iter().flatten().all(|v| v.to_bits() == fast.to_bits()), "{isa:?}: 2x4 with float scales {tile:?}");
                    }
                }
                let tol = 1e-4 * (1.0 + exact.abs());
                assert!((scalar as f64 - exact).abs() < tol, "{ty:?}: scalar {scalar} vs exact {exact}");
                assert_eq!(fast.to_bits(), scalar.to_bits(), "{ty:?} seed {seed}: simd {fast} vs scalar {scalar}");
            }
        }
    }

    #[test]
    fn float_weight_kernels_match_exact_dot() {
        let isa = detect_isa();
        for n in [8usize, 40, 576, 1000] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0).collect();
            let wv: Vec<f32> = (0..n).map(|i| ((i * 57 % 89) as f32 - 44.0) / 23.0).collect();
            let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
                let w: Vec<u8> = match ty {
                    GgmlType::F32 => wv.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    GgmlType::F16 => wv.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    _ => wv.iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                };
                let mut wf = vec![0f32; n];
                dequantize(ty, &w, &mut wf);
                let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = vec_dot(isa, ty, n, &w, &xb) as f64;
                assert!((got - exact).abs() < 1e-3 * (1.0 + exact.abs()), "{ty:?} n={n}: {got} vs {exact}");
            }
        }
    }

    #[test]
    fn simd_activation_quantization_writes_the_scalar_bytes() {
        for seed in 0..200u64 {
            // Mixed magnitudes, exact halves (ties), zeros and an all-zero block.
            let x: Vec<f32> = (0..64)
                .map(|i| match (seed + i) % 7 {
                    0 => 0.0,
                    1 => ((i as f32) - 31.5) * 0.5,
                    _ if seed == 3 => 0.0,
                    _ => ((seed * 131 + i * 977) % 2001) as f32 / 1000.0 - 1.0,
                } * (1.0 + seed as f32))
                .collect();
            for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
                let mut fast = vec![0u8; ty.row_bytes(64)];
                quantize_activation(ty, &x, &mut fast);
                let mut slow = vec![0u8; ty.row_bytes(64)];
                for (blk, xs) in slow.chunks_exact_mut(ty.block_bytes()).zip(x.chunks_exact(32)) {
                    scalar::quantize_block(ty, xs, blk);
                }
                assert_eq!(fast, slow, "{ty:?} seed {seed}");
            }
        }
        // Exact ties (scale 1): half to even, like the scalar code.
        let x: Vec<f32> = (0..32).map(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 }).collect();
        let (mut fast, mut slow) = (vec![0u8; 34], vec![0u8; 34]);
        quantize_activation(GgmlType::Q8_0, &x, &mut fast);
        scalar::quantize_block(GgmlType::Q8_0, &x, &mut slow);
        assert_eq!(fast, slow);
        assert_eq!(fast[2 + 1] as i8, -16, "-15.5 rounds to -16");
        assert_eq!(fast[2 + 2] as i8, -14, "-14.5 rounds to -14");
    }

    #[test]
    fn activation_quantization_round_trips_closely() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
            let mut q = vec![0u8; ty.row_bytes(256)];
            quantize_activation(ty, &x, &mut q);
            let mut back = vec![0f32; 256];
            dequantize(ty, &q, &mut back);
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() < 3.0 / 127.0 * 0.6, "{ty:?}: {a} vs {b}");
            }
        }
    }
}
