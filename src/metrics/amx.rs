//! Proposals for the certified kNN search computed on Intel AMX tiles in bf16
//! (docs/design.md §13).
//!
//! The search in [`super::graph`] asks a fast product only for *candidates*: every value it
//! returns must be within a known bound of the exact inner product, and the candidates are
//! then rescored canonically. AMX's `tdpbf16ps` multiplies bf16 pairs exactly into f32 and
//! accumulates in f32, at about six times the f32 GEMM's rate on one core here. Rows are
//! rounded to bf16 once (round to nearest even, relative error at most u = 2⁻⁸ per element),
//! so a tile's value of rows x and y is within
//!   (2u + u²)·Σ|xₜyₜ| + γ_d·(1 + u)²·Σ|xₜyₜ| + d·2⁻¹²⁴·(‖y‖ + 1)
//! of x·y, where Σ|xₜyₜ| ≤ ‖x‖‖y‖ (the last term covers the unit's flushing of values below
//! 2⁻¹²⁶ to zero). [`Bf16Tiles::gamma`] and [`Bf16Tiles::absolute`] give that bound.
//!
//! Used when the processor has AMX-BF16 and the kernel grants the tile state (Linux ≥ 5.16);
//! `PRH_KNN_GEMM=f32` forces the f32 product (the lists are the same either way).

use rayon::prelude::*;

use super::graph::Source;
use std::sync::OnceLock;

/// Rows per microkernel step: two tiles of 16.
const STEP: usize = 32;
/// bf16 elements per tile row (64 bytes).
const K_CHUNK: usize = 32;

/// Which product proposes candidates for the tiled search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gemm {
    /// faer's f32 GEMM (any machine).
    F32,
    /// AMX bf16 tiles (x86-64 with AMX-BF16).
    Bf16Amx,
}

impl Gemm {
    /// The fastest product this machine offers, unless `PRH_KNN_GEMM` says otherwise.
    pub fn best() -> Gemm {
        match std::env::var("PRH_KNN_GEMM").as_deref() {
            Ok("f32") => Gemm::F32,
            _ if amx_ready() => Gemm::Bf16Amx,
            _ => Gemm::F32,
        }
    }

    /// Short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Gemm::F32 => "f32",
            Gemm::Bf16Amx => "amx-bf16",
        }
    }
}

/// True when AMX bf16 tiles can run in this process (checked once).
pub fn amx_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(imp::enable)
}

/// Rows rounded to bf16 in the two layouts the tiles load: row-major (the left operand) and,
/// per block of 16 rows and chunk of 32 columns, pairs of columns interleaved (the right).
pub struct Bf16Tiles {
    left: Vec<u16>,
    right: Vec<u16>,
    d_pad: usize,
}

impl Bf16Tiles {
    /// Rounds the row-major n × d matrix `x`; rows and columns are padded with zeros to
    /// multiples of 32, which adds nothing to any product. `None` when this process cannot
    /// run AMX tiles ([`amx_ready`]), so a `Bf16Tiles` is proof that it can.
    pub fn pack(x: &[f32], n: usize, d: usize) -> Option<Self> {
        Bf16Tiles::pack_rows(Source::F32(x, n, d))
    }

    /// [`Bf16Tiles::pack`] of the n rows of d values of `rows`, a run at a time: 16-bit rows
    /// are rounded as they are widened, never all held as f32.
    pub fn pack_rows(rows: Source<'_>) -> Option<Self> {
        let (n, d) = (rows.n(), rows.d());
        if !amx_ready() {
            return None;
        }
        const RUN: usize = 256;
        let n_pad = n.div_ceil(STEP) * STEP;
        let d_pad = d.div_ceil(K_CHUNK).max(1) * K_CHUNK;
        let mut left = vec![0u16; n_pad * d_pad];
        left.par_chunks_mut(RUN * d_pad)
            .enumerate()
            .for_each_init(Vec::new, |buf, (c, dst)| {
                let (r0, r1) = (c * RUN, ((c + 1) * RUN).min(n));
                if r0 >= r1 {
                    return; // padding rows only
                }
                let src = rows.rows(r0, r1, buf);
                for (dst, src) in dst.chunks_mut(d_pad).zip(src.chunks(d.max(1))) {
                    for (o, &v) in dst.iter_mut().zip(src) {
                        *o = bf16(v);
                    }
                }
            });
        let chunks = d_pad / K_CHUNK;
        let mut right = vec![0u16; n_pad * d_pad];
        for (jb, block) in right.chunks_mut(16 * d_pad).enumerate() {
            for (s, tile) in block.chunks_mut(16 * K_CHUNK).enumerate() {
                for r in 0..16 {
                    for j in 0..16 {
                        let row = &left[(jb * 16 + j) * d_pad..];
                        tile[r * 32 + 2 * j] = row[s * K_CHUNK + 2 * r];
                        tile[r * 32 + 2 * j + 1] = row[s * K_CHUNK + 2 * r + 1];
                    }
                }
            }
            debug_assert_eq!(block.len(), 16 * chunks * K_CHUNK);
        }
        Some(Bf16Tiles { left, right, d_pad })
    }

    /// The relative part of the bound on |tile value − x·y| (times ‖x‖‖y‖).
    pub fn gamma(&self) -> f64 {
        let u = f64::powi(2.0, -8);
        let du = self.d_pad as f64 * f64::powi(2.0, -24);
        let sum = du / (1.0 - du).max(0.5);
        // A little slack for evaluating the bound itself in f64.
        ((2.0 * u + u * u) + sum * (1.0 + u) * (1.0 + u)) * (1.0 + f64::powi(2.0, -10))
    }

    /// The absolute part of the bound (flushing below 2⁻¹²⁶), for rows of norm ≤ `max_norm`.
    pub fn absolute(&self, max_norm: f64) -> f64 {
        self.d_pad as f64 * f64::powi(2.0, -124) * (max_norm + 1.0)
    }

    /// Writes the products of rows `r0..r0 + rows` with rows `c0..c0 + w` to
    /// `out[i * ldc + j]`. `r0` and `c0` are multiples of 32; rows and columns are computed in
    /// steps of 32, so `out` must hold `rows` and `w` rounded up to 32 (pad values are 0).
    /// Call between [`Bf16Tiles::begin`] and [`Bf16Tiles::end`] on the same thread.
    pub fn block(&self, r0: usize, rows: usize, c0: usize, w: usize, out: &mut [f32], ldc: usize) {
        assert!(
            r0.is_multiple_of(STEP) && c0.is_multiple_of(STEP),
            "tile-aligned block"
        );
        let (rows_p, w_p) = (rows.div_ceil(STEP) * STEP, w.div_ceil(STEP) * STEP);
        assert!(
            ldc >= w_p && out.len() >= (rows_p - 1) * ldc + w_p,
            "room for the block"
        );
        assert!((r0 + rows_p) * self.d_pad <= self.left.len());
        assert!((c0 + w_p) * self.d_pad <= self.right.len());
        let chunks = self.d_pad / K_CHUNK;
        for i in (0..rows_p).step_by(STEP) {
            for j in (0..w_p).step_by(STEP) {
                let a = &self.left[(r0 + i) * self.d_pad..];
                let b = &self.right[(c0 + j) * self.d_pad..];
                // SAFETY: the asserts above keep every tile load inside `left` / `right`
                // (32 rows × d_pad from r0 + i; two 16-row blocks × d_pad from c0 + j) and every
                // store inside `out` (32 rows of 32 values at stride ldc from i·ldc + j).
                unsafe {
                    imp::kernel(
                        a.as_ptr(),
                        self.d_pad,
                        b.as_ptr(),
                        chunks,
                        out.as_mut_ptr().add(i * ldc + j),
                        ldc,
                    )
                };
            }
        }
    }

    /// Loads the tile configuration on this thread (once per task, before any `block`).
    pub fn begin(&self) {
        imp::configure();
    }

    /// Returns this thread's tiles to their initial state.
    pub fn end(&self) {
        imp::release();
    }
}

/// f32 → bf16, round to nearest even (`half`, as bf16 blobs are written); values below 2⁻¹²⁶
/// in magnitude become ±0 (the tiles would treat them as zero anyway). Finite inputs only.
fn bf16(v: f32) -> u16 {
    if v.abs() < f32::MIN_POSITIVE {
        return half::bf16::from_f32(0.0f32.copysign(v)).to_bits();
    }
    half::bf16::from_f32(v).to_bits()
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::asm;
    use std::arch::x86_64::__cpuid_count;

    /// CPUID says AMX-TILE and AMX-BF16, and Linux grants this process the tile data state.
    pub fn enable() -> bool {
        let leaf7 = __cpuid_count(7, 0);
        let (bf16, tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(bf16 && tile) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only asks the kernel for permission.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Palette 1, all eight tiles 16 rows × 64 bytes.
    pub fn configure() {
        let mut c = Config([0; 64]);
        c.0[0] = 1;
        for t in 0..8 {
            c.0[16 + 2 * t] = 64;
            c.0[48 + t] = 16;
        }
        // SAFETY: only called through a `Bf16Tiles`, which exists once `enable` granted the
        // tile state; the configuration is
        // a valid palette-1 layout read from a 64-byte aligned buffer.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &c as *const Config, options(nostack, readonly)) };
    }

    pub fn release() {
        // SAFETY: tilerelease only resets this thread's tile state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// 32 × 32 f32 products: rows of `a` (bf16, row-major, `lda` elements apart) with two
    /// packed 16-row blocks at `b`, `chunks` chunks of 32 elements each, stored at `c` with
    /// row stride `ldc` floats. tmm0–3 accumulate, tmm4–5 hold rows, tmm6–7 the packed blocks.
    ///
    /// # Safety
    /// Tiles configured on this thread; `a` readable for 32 rows of `lda` elements, `b` for
    /// 2 · chunks · 512 elements, `c` writable for 32 rows of 32 floats at stride `ldc`.
    #[inline]
    pub unsafe fn kernel(
        a: *const u16,
        lda: usize,
        b: *const u16,
        chunks: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let (lda_b, ldc_b) = (lda * 2, ldc * 4);
        // SAFETY: the caller's contract covers every address formed here.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a1 = a.add(16 * lda);
            let b1 = b.add(chunks * 512);
            for s in 0..chunks {
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {s64}*1]",
                    "tileloadd tmm7, [{b1} + {s64}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(s * 32),
                    a1 = in(reg) a1.add(s * 32),
                    b0 = in(reg) b.add(s * 512),
                    b1 = in(reg) b1.add(s * 512),
                    lda = in(reg) lda_b,
                    s64 = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{c0} + {l}*1], tmm0",
                "tilestored [{c1} + {l}*1], tmm1",
                "tilestored [{c2} + {l}*1], tmm2",
                "tilestored [{c3} + {l}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * ldc),
                c3 = in(reg) c.add(16 * ldc + 16),
                l = in(reg) ldc_b,
                options(nostack)
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub fn enable() -> bool {
        false
    }
    pub fn configure() {}
    pub fn release() {}
    pub unsafe fn kernel(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut f32, _: usize) {
        unreachable!("AMX tiles on a processor without them")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::dot::dot_f64;
    use crate::rng::Rng;

    #[test]
    fn rounding_to_bf16_is_to_nearest_even_and_flushes_subnormals() {
        let back = |h: u16| f32::from_bits((h as u32) << 16);
        assert_eq!(back(bf16(1.0)), 1.0);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to the even one, 1.
        assert_eq!(back(bf16(1.0 + f32::powi(2.0, -8))), 1.0);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: to the even one, 1 + 2⁻⁶.
        assert_eq!(
            back(bf16(1.0 + 3.0 * f32::powi(2.0, -8))),
            1.0 + f32::powi(2.0, -6)
        );
        assert_eq!(
            back(bf16(-1.0 - f32::powi(2.0, -8) - f32::powi(2.0, -20))),
            -1.0 - f32::powi(2.0, -7)
        );
        assert_eq!(bf16(f32::from_bits(1)), 0);
        assert_eq!(bf16(-f32::from_bits(0x007f_ffff)), 0x8000);
        for v in [0.1f32, -3.7, 1e-30, 6.5e37] {
            let r = back(bf16(v));
            assert!(((r - v) / v).abs() <= f32::powi(2.0, -8), "{v} → {r}");
        }
    }

    #[test]
    fn tile_products_stay_within_the_stated_bound_of_the_exact_ones() {
        if !amx_ready() {
            eprintln!("no AMX-BF16 here: the f32 product serves (PRH_KNN_GEMM=f32 or CPU)");
            return;
        }
        let mut rng = Rng::new(7);
        // Odd sizes (padding on both axes), mixed magnitudes, exact zeros and tiny values.
        for (n, d) in [(70usize, 45usize), (97, 300), (33, 8)] {
            let x: Vec<f32> = (0..n * d)
                .map(|t| match t % 11 {
                    0 => 0.0,
                    1 => 1e-39,
                    2 => rng.normal() as f32 * 1e4,
                    _ => rng.normal() as f32,
                })
                .collect();
            let tiles = Bf16Tiles::pack(&x, n, d).expect("AMX ready");
            let (rp, wp) = (n.div_ceil(32) * 32, n.div_ceil(32) * 32);
            let mut out = vec![f32::NAN; rp * wp];
            tiles.begin();
            tiles.block(0, n, 0, n, &mut out, wp);
            tiles.end();
            let row = |i: usize| &x[i * d..(i + 1) * d];
            let norm = |i: usize| dot_f64(row(i), row(i)).sqrt();
            let max_norm = (0..n).map(norm).fold(0.0, f64::max);
            let mut worst = 0.0f64;
            for i in 0..n {
                for j in 0..n {
                    let exact = dot_f64(row(i), row(j));
                    let bound = tiles.gamma() * norm(i) * norm(j) + tiles.absolute(max_norm);
                    let err = (out[i * wp + j] as f64 - exact).abs();
                    assert!(
                        err <= bound,
                        "({i},{j}) of {n}×{d}: off by {err:e}, bound {bound:e}"
                    );
                    worst = worst.max(err / (norm(i) * norm(j)).max(1e-300));
                }
            }
            // The bound is not vacuous: the rounding to bf16 is visible.
            assert!(
                worst > 1e-5,
                "relative error {worst:e} looks like f32, not bf16"
            );
        }
    }
}
