//! AVX2 + FMA + F16C dot-product kernels (same arithmetic as `scalar`, integer sums exact).
//! Every function here is `unsafe` because it requires those CPU features; callers check them
//! once through `detect_isa`.

use std::arch::x86_64::*;

use super::GgmlType;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_load(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 nibbles of 16 bytes as 32 bytes in element order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 16 readable bytes.
    let tmp = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Sum of unsigned(x) * signed(y) over 32 byte pairs, as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_us8(x: __m256i, y: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// Sum of signed(x) * signed(y) over 32 byte pairs, as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8(ax, sy)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 32 readable bytes.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Dot product with an AVX2 kernel, or `None` when this type has none (the caller then uses the
/// scalar kernel).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `w` and `a` must hold `n` elements encoded as `wt`
/// and `wt.dot_type()` (the caller's debug assertions check this).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot(wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Option<f32> {
    let nb = n / 32;
    // Checked here so the pointer arithmetic below stays inside both slices.
    if w.len() < wt.row_bytes(n) || a.len() < wt.dot_type().row_bytes(n) {
        return None;
    }
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    Some(match wt {
        GgmlType::Q4_1 => {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            for i in 0..nb {
                let (wo, ao) = (i * 20, i * 36);
                let dw = f16_load(w, wo);
                let da = f16_load(a, ao);
                summs += f16_load(w, wo + 2) * f16_load(a, ao + 2);
                // SAFETY: block i of both rows lies inside the slices (length checked above).
                let (x, y) = unsafe { (nibbles(wp.add(wo + 4)), load32(ap.add(ao + 4))) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), mul_sum_us8(x, y), acc);
            }
            hsum(acc) + summs
        }
        GgmlType::Q4_0 => {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let (wo, ao) = (i * 18, i * 34);
                let d = f16_load(w, wo) * f16_load(a, ao);
                // SAFETY: as above.
                let (x, y) = unsafe { (nibbles(wp.add(wo + 2)), load32(ap.add(ao + 2))) };
                let x = _mm256_sub_epi8(x, _mm256_set1_epi8(8));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(x, y), acc);
            }
            hsum(acc)
        }
        GgmlType::Q8_0 => {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let o = i * 34;
                let d = f16_load(w, o) * f16_load(a, o);
                // SAFETY: as above.
                let (x, y) = unsafe { (load32(wp.add(o + 2)), load32(ap.add(o + 2))) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(x, y), acc);
            }
            hsum(acc)
        }
        GgmlType::Q5_0 => {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let (wo, ao) = (i * 22, i * 34);
                let d = f16_load(w, wo) * f16_load(a, ao);
                let qh = u32::from_le_bytes([w[wo + 2], w[wo + 3], w[wo + 4], w[wo + 5]]);
                // SAFETY: as above.
                let (x, y) = unsafe { (nibbles(wp.add(wo + 6)), load32(ap.add(ao + 2))) };
                // Value - 16 as a signed byte: set the high nibble where the fifth bit is clear.
                let x = _mm256_or_si256(x, _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8)));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(x, y), acc);
            }
            hsum(acc)
        }
        GgmlType::Q4_K => {
            let nb = n / 256;
            let mut acc = _mm256_setzero_ps();
            let mut acc_m = _mm_setzero_ps();
            let low = _mm256_set1_epi8(0x0F);
            for i in 0..nb {
                let (wo, ao) = (i * 144, i * 292);
                let d8 = f32::from_le_bytes([a[ao], a[ao + 1], a[ao + 2], a[ao + 3]]);
                let d = d8 * f16_load(w, wo);
                let dmin = -d8 * f16_load(w, wo + 2);
                let mut sc = [0u8; 8];
                let mut mn = [0i16; 8];
                for j in 0..8 {
                    let (s, m) = super::scalar::scale_min_k4(j, &w[wo + 4..wo + 16]);
                    sc[j] = s;
                    mn[j] = m as i16;
                }
                // Minimum terms: 4 lanes of mins · (pairs of block sums).
                // SAFETY: the 16 block sums lie inside this super-block of `a`.
                let bsums = unsafe { _mm256_loadu_si256(ap.add(ao + 260) as *const __m256i) };
                let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
                // SAFETY: `mn` holds 8 i16.
                let mins = unsafe { _mm_loadu_si128(mn.as_ptr() as *const __m128i) };
                let prod = _mm_madd_epi16(mins, q8s);
                acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
                let mut sumi = _mm256_setzero_si256();
                for j in 0..4 {
                    // SAFETY: chunk j of qs (32 bytes) and 64 activation bytes are in bounds.
                    let (bits, ylo, yhi) = unsafe {
                        (load32(wp.add(wo + 16 + 32 * j)), load32(ap.add(ao + 4 + 64 * j)), load32(ap.add(ao + 36 + 64 * j)))
                    };
                    let xlo = _mm256_and_si256(bits, low);
                    let xhi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
                    let plo = _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j] as i16), _mm256_maddubs_epi16(xlo, ylo));
                    let phi = _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j + 1] as i16), _mm256_maddubs_epi16(xhi, yhi));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            hsum(acc) + _mm_cvtss_f32(m)
        }
        GgmlType::Q6_K => {
            let nb = n / 256;
            let mut acc = _mm256_setzero_ps();
            let m15 = _mm256_set1_epi8(15);
            let m3 = _mm256_set1_epi8(3);
            for i in 0..nb {
                let (wo, ao) = (i * 210, i * 292);
                let d8 = f32::from_le_bytes([a[ao], a[ao + 1], a[ao + 2], a[ao + 3]]);
                let d = d8 * f16_load(w, wo + 208);
                let sc = &w[wo + 192..wo + 208];
                // SAFETY: 16 block sums and 16 scale bytes lie inside the super-blocks.
                let (bsums, scales16) = unsafe {
                    (
                        _mm256_loadu_si256(ap.add(ao + 260) as *const __m256i),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(wo + 192) as *const __m128i)),
                    )
                };
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
                let mut sumi = _mm256_setzero_si256();
                for half in 0..2 {
                    let (ql, qh, y) = (wo + 64 * half, wo + 128 + 32 * half, ao + 4 + 128 * half);
                    // SAFETY: 64 ql bytes, 32 qh bytes and 128 activation bytes are in bounds.
                    let (b1, b2, bh) = unsafe { (load32(wp.add(ql)), load32(wp.add(ql + 32)), load32(wp.add(qh))) };
                    let h = |shift: i32| -> __m256i {
                        // Two high bits per value, moved to bits 4..5.
                        let v = _mm256_and_si256(_mm256_srl_epi16(bh, _mm_cvtsi32_si128(shift)), m3);
                        _mm256_slli_epi16(v, 4)
                    };
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(b1, m15), h(0)),
                        _mm256_or_si256(_mm256_and_si256(b2, m15), h(2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m15), h(4)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m15), h(6)),
                    ];
                    for (c, qc) in q.iter().enumerate() {
                        // SAFETY: chunk c of this half's activations is in bounds.
                        let yc = unsafe { load32(ap.add(y + 32 * c)) };
                        let s_idx = 8 * half + 2 * c;
                        let scale = _mm256_set_m128i(
                            _mm_set1_epi16(sc[s_idx + 1] as i8 as i16),
                            _mm_set1_epi16(sc[s_idx] as i8 as i16),
                        );
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, _mm256_maddubs_epi16(*qc, yc)));
                    }
                }
                sumi = _mm256_sub_epi32(sumi, offset);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum(acc)
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => float_dot(wt, n, wp, ap),
        _ => return None,
    })
}

/// Float weights against f32 activations, 4 × 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn float_dot(wt: GgmlType, n: usize, wp: *const u8, ap: *const u8) -> f32 {
    let load_w = |i: usize| -> __m256 {
        // SAFETY: i + 8 <= n; the caller checked both rows hold n elements.
        unsafe {
            match wt {
                GgmlType::F32 => _mm256_loadu_ps(wp.add(4 * i) as *const f32),
                GgmlType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * i) as *const __m128i)),
                _ => {
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(wp.add(2 * i) as *const __m128i));
                    _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
                }
            }
        }
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = unsafe { _mm256_loadu_ps(ap.add(4 * (i + 8 * k)) as *const f32) };
            *a = _mm256_fmadd_ps(load_w(i + 8 * k), x, *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: as above.
        let x = unsafe { _mm256_loadu_ps(ap.add(4 * i) as *const f32) };
        acc[0] = _mm256_fmadd_ps(load_w(i), x, acc[0]);
        i += 8;
    }
    let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3])));
    let mut tail = [0f32; 8];
    for (j, t) in tail.iter_mut().enumerate().take(n - i) {
        let mut w = [0f32; 8];
        // SAFETY: element i + j < n.
        unsafe { _mm256_storeu_ps(w.as_mut_ptr(), load_w_scalar(wt, wp, i + j)) };
        // SAFETY: element i + j < n.
        *t = w[0] * unsafe { *(ap.add(4 * (i + j)) as *const f32) };
    }
    sum += tail.iter().sum::<f32>();
    sum
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_w_scalar(wt: GgmlType, wp: *const u8, i: usize) -> __m256 {
    let mut v = [0f32; 1];
    // SAFETY: the caller passes an in-bounds element index.
    let b = unsafe { std::slice::from_raw_parts(wp.add(i * wt.block_bytes()), wt.block_bytes()) };
    super::dequantize(wt, b, &mut v);
    _mm256_set1_ps(v[0])
}

/// 32 bits as 32 bytes: 0xFF where the bit is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes source byte i / 8.
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask)
}

/// Dot products of one weight row with four activation rows at once (each result bit-equal to
/// `vec_dot` on that row): the weight block is decoded once and four FMA chains run side by
/// side. `None` for types without a multi-row kernel.
///
/// # Safety
/// As `vec_dot`, for each of the four activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_x4(wt: GgmlType, n: usize, w: &[u8], a: [&[u8]; 4]) -> Option<[f32; 4]> {
    let nb = n / 32;
    let arb = wt.dot_type().row_bytes(n);
    if w.len() < wt.row_bytes(n) || a.iter().any(|r| r.len() < arb) {
        return None;
    }
    let wp = w.as_ptr();
    let ap = [a[0].as_ptr(), a[1].as_ptr(), a[2].as_ptr(), a[3].as_ptr()];
    let mut acc = [_mm256_setzero_ps(); 4];
    match wt {
        GgmlType::Q4_1 => {
            let mut summs = [0f32; 4];
            for i in 0..nb {
                let (wo, ao) = (i * 20, i * 36);
                let (dw, mw) = (f16_load(w, wo), f16_load(w, wo + 2));
                // SAFETY: block i lies inside the weight row (length checked above).
                let x = unsafe { nibbles(wp.add(wo + 4)) };
                for t in 0..4 {
                    summs[t] += mw * f16_load(a[t], ao + 2);
                    // SAFETY: block i lies inside activation row t.
                    let y = unsafe { load32(ap[t].add(ao + 4)) };
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * f16_load(a[t], ao)), mul_sum_us8(x, y), acc[t]);
                }
            }
            Some([hsum(acc[0]) + summs[0], hsum(acc[1]) + summs[1], hsum(acc[2]) + summs[2], hsum(acc[3]) + summs[3]])
        }
        GgmlType::Q8_0 => {
            for i in 0..nb {
                let o = i * 34;
                let dw = f16_load(w, o);
                // SAFETY: as above.
                let x = unsafe { load32(wp.add(o + 2)) };
                let ax = _mm256_sign_epi8(x, x);
                for t in 0..4 {
                    // SAFETY: as above.
                    let y = unsafe { load32(ap[t].add(o + 2)) };
                    let sy = _mm256_sign_epi8(y, x);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * f16_load(a[t], o)), mul_sum_us8(ax, sy), acc[t]);
                }
            }
            Some([hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])])
        }
        _ => None,
    }
}
