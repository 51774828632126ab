//! Feature preparation as the official pipeline does it (docs/design.md §4): clamp every value to
//! ±t, where t is the element at 0-based index ⌊q·N⌋ of the N absolute values sorted
//! ascending, then L2-normalise each row.
//!
//! The scope of t follows the official code: features given as one n × L × d tensor are
//! clamped over all layers together (one t per checkpoint); features given as per-layer arrays
//! (a list in `.pt`, one array per layer in `.npz`/`.safetensors`) are clamped layer by layer,
//! each at its own t (platonic-rep's `prepare_features` per list entry). The [`Layout`] is
//! recorded at ingest; [`ClampScope`] overrides it.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// How a checkpoint's layers were given: what decides the official clamp scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One tensor (n × d, or n × L × d): one threshold over all layers.
    Stacked,
    /// Several per-layer arrays (possibly of different widths): one threshold per layer.
    Layers,
}

impl Layout {
    /// The name stored in the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Stacked => "stacked",
            Layout::Layers => "layers",
        }
    }

    /// Parses a stored name.
    pub fn from_name(s: &str) -> Option<Layout> {
        match s {
            "stacked" => Some(Layout::Stacked),
            "layers" => Some(Layout::Layers),
            _ => None,
        }
    }
}

/// Which values one clamp threshold is taken over, as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ClampScope {
    /// The official rule: [`Scope::Layer`] for per-layer arrays, [`Scope::Checkpoint`] for a
    /// stacked tensor (and for checkpoints whose layout was never recorded).
    /// The official rule: by the layout the features were given in.
    #[default]
    Auto,
    /// One threshold over all layers of the checkpoint.
    Checkpoint,
    /// One threshold per layer.
    Layer,
}

/// The scope a checkpoint's layers are clamped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One threshold over all layers together.
    Checkpoint,
    /// One threshold per layer.
    Layer,
}

impl ClampScope {
    /// The scope for a checkpoint of `layers` layers given in `layout` (`None`: not recorded,
    /// as in registries from before layouts were recorded). One layer is always
    /// [`Scope::Checkpoint`]: both scopes take the same values, so they share one cache key.
    pub fn resolve(self, layout: Option<Layout>, layers: usize) -> Scope {
        match self {
            _ if layers <= 1 => Scope::Checkpoint,
            ClampScope::Checkpoint => Scope::Checkpoint,
            ClampScope::Layer => Scope::Layer,
            ClampScope::Auto => match layout {
                Some(Layout::Layers) => Scope::Layer,
                _ => Scope::Checkpoint,
            },
        }
    }

    /// The token a prep kind carries for this choice (none for the official rule).
    pub fn token(self) -> Option<&'static str> {
        match self {
            ClampScope::Auto => None,
            ClampScope::Checkpoint => Some("scope=checkpoint"),
            ClampScope::Layer => Some("scope=layer"),
        }
    }

    /// The choice named by a prep kind (see [`Prep::kind`]).
    pub fn from_kind(kind: &str) -> ClampScope {
        if kind.contains("scope=checkpoint") {
            ClampScope::Checkpoint
        } else if kind.contains("scope=layer") {
            ClampScope::Layer
        } else {
            ClampScope::Auto
        }
    }
}

/// How a clamp threshold is taken from the values in its scope: platonic-rep's two
/// conventions (`metrics.remove_outliers(exact=...)`), which its two entry points disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ClampRule {
    /// `exact=True`, the default of `compute_alignment` and `platonic.Alignment.score`: the
    /// element at index ⌊q·N⌋ of the N values |X| sorted ascending.
    #[default]
    Exact,
    /// `exact=False`, what `measure_alignment.py` runs unless given `--precise`: the mean over
    /// samples of each sample's q-quantile of its |values| (linear interpolation, as
    /// `torch.quantile`).
    SampleMean,
}

impl ClampRule {
    /// Its name on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            ClampRule::Exact => "exact",
            ClampRule::SampleMean => "sample-mean",
        }
    }

    /// The token prep keys and kinds carry for it (none for the default, so keys made before
    /// the rule existed still name exact thresholds).
    pub fn token(self) -> Option<&'static str> {
        match self {
            ClampRule::Exact => None,
            ClampRule::SampleMean => Some("rule=sample-mean"),
        }
    }

    /// What its thresholds' entries in `clamp_thresholds` start with (before the layer set's
    /// key): nothing for exact, as before the rule existed.
    pub fn table_prefix(self) -> &'static str {
        match self {
            ClampRule::Exact => "",
            ClampRule::SampleMean => "sample-mean:",
        }
    }

    /// The rule and layer-set key of an entry of `clamp_thresholds`.
    pub fn of_table_key(key: &str) -> (ClampRule, &str) {
        match key.strip_prefix(ClampRule::SampleMean.table_prefix()) {
            Some(k) => (ClampRule::SampleMean, k),
            None => (ClampRule::Exact, key),
        }
    }

    /// The threshold of these layers taken together (the layers of one scope) at q.
    pub fn threshold(self, layers: &[ArrayView2<f32>], q: f64) -> Option<f32> {
        match self {
            ClampRule::Exact => clamp_threshold(layers, q),
            ClampRule::SampleMean => sample_mean_threshold(layers, q),
        }
    }
}

/// How features are prepared before a metric sees them. Part of every cache key.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prep {
    /// Quantile q of |X| for the clamp (official: 0.95); `None` = no clamp.
    pub clamp_q: Option<f64>,
    /// Which values each clamp threshold is taken over.
    pub scope: ClampScope,
    /// How each threshold is taken from them.
    #[serde(default)]
    pub rule: ClampRule,
    /// L2-normalise rows (official: yes).
    pub normalize: bool,
}

impl Default for Prep {
    fn default() -> Self {
        Prep::OFFICIAL
    }
}

impl Prep {
    /// The official pipeline: clamp at the exact 0.95 selection, then row-normalise.
    pub const OFFICIAL: Prep = Prep {
        clamp_q: Some(0.95),
        scope: ClampScope::Auto,
        rule: ClampRule::Exact,
        normalize: true,
    };
    /// Rows used as given.
    pub const NONE: Prep = Prep {
        clamp_q: None,
        scope: ClampScope::Auto,
        rule: ClampRule::Exact,
        normalize: false,
    };

    /// Canonical text for cache keys, including the threshold actually used (its f32 bits in
    /// hex, so the key is exact) and, for a per-layer threshold, the scope:
    /// `clamp(q=0.95,t=0x400a3c1e);l2` (over the checkpoint) or
    /// `clamp(q=0.95,scope=layer,t=0x3f8ccccd);l2` (this layer's own); a threshold taken by
    /// the sample-mean rule says so: `clamp(q=0.95,rule=sample-mean,t=…);l2`.
    pub fn key(&self, threshold: Option<f32>, scope: Scope) -> String {
        let mut parts = Vec::new();
        if let (Some(q), Some(t)) = (self.clamp_q, threshold) {
            let rule = self
                .rule
                .token()
                .map(|r| format!("{r},"))
                .unwrap_or_default();
            let scope = match scope {
                Scope::Checkpoint => "",
                Scope::Layer => "scope=layer,",
            };
            parts.push(format!("clamp(q={q},{rule}{scope}t=0x{:08x})", t.to_bits()));
        }
        self.join(parts)
    }

    /// The clamp part (if any) followed by `l2` when rows are normalised; `raw` for neither.
    fn join(&self, mut parts: Vec<String>) -> String {
        if self.normalize {
            parts.push("l2".to_string());
        }
        if parts.is_empty() {
            "raw".into()
        } else {
            parts.join(";")
        }
    }

    /// The preparation without thresholds, naming the scope choice unless it is the official
    /// rule: `clamp(q=0.95);l2`, `clamp(q=0.95,scope=checkpoint);l2`, `l2`, `raw`. Queries
    /// select cached cells by it.
    pub fn kind(&self) -> String {
        let mut parts = Vec::new();
        if let Some(q) = self.clamp_q {
            let tokens: Vec<String> = std::iter::once(format!("q={q}"))
                .chain(self.rule.token().map(String::from))
                .chain(self.scope.token().map(String::from))
                .collect();
            parts.push(format!("clamp({})", tokens.join(",")));
        }
        self.join(parts)
    }

    /// The clamp threshold of each layer under `scope` (all equal for [`Scope::Checkpoint`]).
    pub fn thresholds(&self, layers: &[ArrayView2<f32>], scope: Scope) -> Vec<Option<f32>> {
        let Some(q) = self.clamp_q else {
            return vec![None; layers.len()];
        };
        match scope {
            Scope::Checkpoint => vec![self.rule.threshold(layers, q); layers.len()],
            Scope::Layer => layers
                .iter()
                .map(|l| self.rule.threshold(std::slice::from_ref(l), q))
                .collect(),
        }
    }
}

/// The clamp threshold of these layers together: the element at index ⌊q·N⌋ of all their
/// |values| sorted ascending (a selection, exactly as `remove_outliers(exact=True)`).
/// `None` when q ≥ 1 (the official code skips the clamp then).
///
/// Exact and O(N) time with O(65 536 + bucket) memory: a histogram over the top 16 bits of the
/// (monotone) bit patterns of |x| finds the bucket holding the rank, a second pass selects in it.
pub fn clamp_threshold(layers: &[ArrayView2<f32>], q: f64) -> Option<f32> {
    if q >= 1.0 {
        return None;
    }
    let total: usize = layers.iter().map(|l| l.len()).sum();
    if total == 0 {
        return None;
    }
    let idx = ((q.max(0.0) * total as f64) as usize).min(total - 1);
    let mut hist = vec![0usize; 1 << 16];
    for l in layers {
        for v in l.iter() {
            hist[(v.abs().to_bits() >> 16) as usize] += 1;
        }
    }
    let mut seen = 0usize;
    let mut bucket = 0usize;
    for (b, &c) in hist.iter().enumerate() {
        if seen + c > idx {
            bucket = b;
            break;
        }
        seen += c;
    }
    let mut vals: Vec<u32> = Vec::with_capacity(hist[bucket]);
    for l in layers {
        for v in l.iter() {
            let bits = v.abs().to_bits();
            if (bits >> 16) as usize == bucket {
                vals.push(bits);
            }
        }
    }
    let k = idx - seen;
    let (_, nth, _) = vals.select_nth_unstable(k);
    Some(f32::from_bits(*nth))
}

/// The clamp threshold of these layers together by the sample-mean rule: for each sample
/// (row), the q-quantile of its |values| over all the layers, interpolated linearly between the
/// two nearest ranks in f32 as `torch.quantile` does; then the mean over samples. `None` when
/// q ≥ 1 or there are no values.
pub fn sample_mean_threshold(layers: &[ArrayView2<f32>], q: f64) -> Option<f32> {
    let n = layers.first()?.nrows();
    let m: usize = layers.iter().map(|l| l.ncols()).sum();
    if q >= 1.0 || n == 0 || m == 0 {
        return None;
    }
    let q = q as f32;
    let rank = q * (m - 1) as f32;
    let (below, weight) = (rank as usize, rank - (rank as usize) as f32);
    let above = (rank.ceil() as usize).min(m - 1);
    let quantiles: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut row: Vec<f32> = layers
                .iter()
                .flat_map(|l| l.row(i).into_iter().map(|v| v.abs()))
                .collect();
            // The two order statistics, without sorting the row.
            let (rest, hi, _) = row.select_nth_unstable_by(above, f32::total_cmp);
            let hi = *hi;
            let lo = if below == above {
                hi
            } else {
                rest.iter()
                    .copied()
                    .max_by(f32::total_cmp)
                    .expect("below < above")
            };
            // torch's lerp, in f32.
            let v = if weight < 0.5 {
                lo + weight * (hi - lo)
            } else {
                hi - (hi - lo) * (1.0 - weight)
            };
            v as f64
        })
        .collect();
    Some((quantiles.iter().sum::<f64>() / n as f64) as f32)
}

/// Applies the clamp (when `threshold` is given) and row normalisation to one layer.
/// An all-zero row cannot be normalised and is an error naming the row.
pub fn prepare(x: ArrayView2<f32>, threshold: Option<f32>, normalize: bool) -> Result<Array2<f32>> {
    prepare_owned(x.as_standard_layout().into_owned(), threshold, normalize)
}

/// [`prepare`] in place, holding no second copy of the layer.
pub fn prepare_owned(
    x: Array2<f32>,
    threshold: Option<f32>,
    normalize: bool,
) -> Result<Array2<f32>> {
    let mut x = standard(x);
    let d = x.ncols();
    let n = x.nrows();
    let data = x.as_slice_mut().expect("standard layout");
    for i in 0..n {
        let row = &mut data[i * d..(i + 1) * d];
        clamp_row(row, threshold);
        let scale = unit_scale(row).ok_or_else(|| zero_row(i))?;
        if normalize {
            scale_row(row, scale);
        }
    }
    Ok(x)
}

/// `x` in standard (row-major) layout, copied only when it is not.
pub(crate) fn standard(x: Array2<f32>) -> Array2<f32> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

/// Clamps a row's values to ±`threshold` (when given): the first step of [`prepare`].
#[inline]
pub(crate) fn clamp_row(row: &mut [f32], threshold: Option<f32>) {
    if let Some(t) = threshold {
        for v in row {
            *v = v.clamp(-t, t);
        }
    }
}

/// The factor that gives a (clamped) row unit norm, 1/‖row‖ (the norm summed in f64) rounded
/// to f32; `None` for an all-zero row.
#[inline]
pub(crate) fn unit_scale(row: &[f32]) -> Option<f32> {
    let norm = row
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    (norm != 0.0).then(|| (1.0 / norm) as f32)
}

/// Multiplies a row by its [`unit_scale`]: the last step of [`prepare`].
#[inline]
pub(crate) fn scale_row(row: &mut [f32], scale: f32) {
    for v in row {
        *v *= scale;
    }
}

/// The error for an all-zero row i.
pub(crate) fn zero_row(i: usize) -> Error {
    Error::Invalid(format!(
        "row {i} is all zeros: alignment metrics need a direction for every sample"
    ))
}

// ----- prep keys read back: the inverse of [`Prep::key`] and [`Prep::kind`], beside them -----

/// The official preparation's kind ([`Prep::OFFICIAL`]`.kind()`, a key without its threshold).
pub const OFFICIAL_KIND: &str = "clamp(q=0.95);l2";

/// A prep key without thresholds and scope, naming the scope choice `scope` as
/// [`Prep::kind`] does: `clamp(q=0.95,scope=layer,t=0x…);l2` →
/// `clamp(q=0.95);l2` (for [`ClampScope::Auto`]).
pub fn kind_of_key(key: &str, scope: ClampScope) -> String {
    let token = scope.token();
    key.split(';')
        .map(|part| match part.strip_prefix("clamp(") {
            Some(inner) => {
                let kept: Vec<&str> = inner
                    .trim_end_matches(')')
                    .split(',')
                    .filter(|kv| !kv.starts_with("t=") && !kv.starts_with("scope="))
                    .chain(token)
                    .collect();
                format!("clamp({})", kept.join(","))
            }
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The clamp of a prep key: q, the f32 bits of t, the scope and the rule.
pub type KeyClamp = (f64, u32, Scope, ClampRule);

/// The clamp of a prep key such as `clamp(q=0.95,t=0x3f8ccccd);l2` (over the checkpoint),
/// `clamp(q=0.95,scope=layer,t=0x3f8ccccd);l2` (per layer) or
/// `clamp(q=0.95,rule=sample-mean,t=…);l2` (the sample-mean rule).
pub fn clamp_of_key(key: &str) -> Option<KeyClamp> {
    let inner = key
        .split(';')
        .find_map(|p| p.strip_prefix("clamp("))?
        .trim_end_matches(')');
    let mut q = None;
    let mut t = None;
    let mut scope = Scope::Checkpoint;
    let mut rule = ClampRule::Exact;
    for kv in inner.split(',') {
        if let Some(v) = kv.strip_prefix("q=") {
            q = v.parse::<f64>().ok();
        } else if let Some(v) = kv.strip_prefix("t=0x") {
            t = u32::from_str_radix(v, 16).ok();
        } else if kv == "scope=layer" {
            scope = Scope::Layer;
        } else if kv == "rule=sample-mean" {
            rule = ClampRule::SampleMean;
        }
    }
    Some((q?, t?, scope, rule))
}

/// Parses a prep key (`clamp(q=0.95,t=0x…);l2`, `l2`, `raw`) into (threshold, normalise).
pub fn from_key(key: &str) -> Option<(Option<f32>, bool)> {
    let mut threshold = None;
    let mut normalize = false;
    for part in key.split(';') {
        if part == "l2" {
            normalize = true;
        } else if part == "raw" {
        } else if let Some(inner) = part
            .strip_prefix("clamp(")
            .and_then(|p| p.strip_suffix(')'))
        {
            let t = inner.split(',').find_map(|kv| kv.strip_prefix("t=0x"))?;
            threshold = Some(f32::from_bits(u32::from_str_radix(t, 16).ok()?));
        } else {
            return None;
        }
    }
    Some((threshold, normalize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn threshold_is_the_exact_selection_over_all_layers() {
        let a = array![[1.0f32, -5.0], [3.0, 2.0]];
        let b = array![[-4.0f32, 0.5], [6.0, -7.0]];
        // |values| sorted: 0.5 1 2 3 4 5 6 7; N = 8; q = 0.5 -> index 4 -> 4.0
        let t = clamp_threshold(&[a.view(), b.view()], 0.5).unwrap();
        assert_eq!(t, 4.0);
        // q = 0.95 -> index floor(7.6) = 7 -> 7.0
        assert_eq!(clamp_threshold(&[a.view(), b.view()], 0.95), Some(7.0));
        assert_eq!(clamp_threshold(&[a.view()], 1.0), None);
    }

    #[test]
    fn prepare_clamps_then_normalises_and_rejects_zero_rows() {
        let x = array![[3.0f32, 10.0], [0.0, -2.0]];
        let p = prepare(x.view(), Some(4.0), true).unwrap();
        assert!((p[[0, 0]] - 0.6).abs() < 1e-6 && (p[[0, 1]] - 0.8).abs() < 1e-6);
        assert_eq!(p[[1, 1]], -1.0);
        let z = array![[0.0f32, 0.0], [1.0, 0.0]];
        assert!(
            prepare(z.view(), None, true)
                .unwrap_err()
                .to_string()
                .contains("row 0")
        );
    }

    #[test]
    fn prep_kind_drops_the_threshold_and_names_the_scope_choice() {
        let auto = ClampScope::Auto;
        assert_eq!(
            kind_of_key("clamp(q=0.95,t=0x400a3c1e);l2", auto),
            OFFICIAL_KIND
        );
        assert_eq!(
            kind_of_key("clamp(q=0.95,scope=layer,t=0x400a3c1e);l2", auto),
            OFFICIAL_KIND
        );
        assert_eq!(
            kind_of_key("clamp(q=0.95,t=0x400a3c1e);l2", ClampScope::Checkpoint),
            "clamp(q=0.95,scope=checkpoint);l2"
        );
        assert_eq!(kind_of_key("l2", ClampScope::Layer), "l2");
        assert_eq!(kind_of_key("raw", auto), "raw");
        for scope in [ClampScope::Auto, ClampScope::Checkpoint, ClampScope::Layer] {
            let p = Prep {
                scope,
                ..Prep::OFFICIAL
            };
            assert_eq!(
                kind_of_key(&p.key(Some(1.5), Scope::Layer), scope),
                p.kind()
            );
            assert_eq!(ClampScope::from_kind(&p.kind()), scope);
        }
        assert_eq!(
            clamp_of_key("clamp(q=0.95,scope=layer,t=0x3fc00000);l2"),
            Some((0.95, 0x3fc0_0000, Scope::Layer, ClampRule::Exact))
        );
        assert_eq!(
            clamp_of_key("clamp(q=0.95,rule=sample-mean,scope=layer,t=0x3fc00000);l2"),
            Some((0.95, 0x3fc0_0000, Scope::Layer, ClampRule::SampleMean))
        );
    }

    #[test]
    fn every_prep_key_reads_back_as_what_wrote_it() {
        assert_eq!(Prep::OFFICIAL.kind(), OFFICIAL_KIND);
        let preps = [
            Prep::OFFICIAL,
            Prep::NONE,
            Prep {
                clamp_q: Some(0.9),
                scope: ClampScope::Layer,
                rule: ClampRule::Exact,
                normalize: true,
            },
            Prep {
                clamp_q: None,
                scope: ClampScope::Auto,
                rule: ClampRule::SampleMean,
                normalize: true,
            },
            Prep {
                clamp_q: Some(0.99),
                scope: ClampScope::Checkpoint,
                rule: ClampRule::Exact,
                normalize: false,
            },
            Prep {
                clamp_q: Some(0.95),
                scope: ClampScope::Layer,
                rule: ClampRule::SampleMean,
                normalize: true,
            },
            Prep {
                rule: ClampRule::SampleMean,
                ..Prep::OFFICIAL
            },
        ];
        for p in preps {
            for scope in [Scope::Checkpoint, Scope::Layer] {
                for t in [Some(1.5f32), Some(0.123_456_79), None] {
                    let key = p.key(t, scope);
                    let threshold = t.filter(|_| p.clamp_q.is_some());
                    assert_eq!(from_key(&key), Some((threshold, p.normalize)), "{key}");
                    let clamp = p
                        .clamp_q
                        .zip(threshold)
                        .map(|(q, t)| (q, t.to_bits(), scope, p.rule));
                    assert_eq!(clamp_of_key(&key), clamp, "{key}");
                    if p.clamp_q.is_none() || t.is_some() {
                        assert_eq!(kind_of_key(&key, p.scope), p.kind(), "{key}");
                    }
                }
            }
        }
        assert_eq!(from_key("clamp(q=0.95);l2;gzip"), None);
    }
}
