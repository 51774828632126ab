//! The chart queries that `prh trend`, `prh matrix`, `prh trajectory` and `prh serve` share:
//! one metric, model selectors in, the analysis out — read from the cell cache, which
//! [`View::fill`] tops up through the sweep engine when a caller allows computing.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::analysis::{self, Matrix, PairScore, TrajectoryPoint, Trend, TrendRequest};
use crate::catalog::CheckpointId;
use crate::error::{Error, Result};
use crate::layers::Reduce;
use crate::metrics::{ClampRule, ClampScope, MetricSpec, Prep};
use crate::query;
use crate::registry::Registry;
use crate::sweep::{self, Progress, Selector, SweepRequest};

/// One metric with its preparation and layer aggregate: what every chart is about.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub spec: MetricSpec,
    pub prep: Prep,
    pub reduce: Reduce,
}

/// What a matrix's cells hold: the scores, or a statistic of each pair's permutation null
/// (which needs one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CellValue {
    /// The model pair's score.
    #[default]
    Score,
    /// Its permutation p-value.
    PValue,
    /// Its Benjamini–Hochberg q-value among the matrix's pairs.
    QValue,
    /// Its calibrated score (Gröger, Wen & Brbić).
    Calibrated,
}

impl CellValue {
    /// Every choice, as named on the command line and in query strings.
    pub const ALL: [CellValue; 4] = [
        CellValue::Score,
        CellValue::PValue,
        CellValue::QValue,
        CellValue::Calibrated,
    ];

    /// The name (`score`, `p_value`, `q_value`, `calibrated`).
    pub fn key(self) -> &'static str {
        match self {
            CellValue::Score => "score",
            CellValue::PValue => "p_value",
            CellValue::QValue => "q_value",
            CellValue::Calibrated => "calibrated",
        }
    }

    fn of(self, r: &sweep::PairResult) -> Option<f64> {
        match self {
            CellValue::Score => Some(r.score),
            CellValue::PValue => r.p_value,
            CellValue::QValue => r.q_value,
            CellValue::Calibrated => r.calibrated,
        }
    }
}

impl std::str::FromStr for CellValue {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CellValue::ALL
            .into_iter()
            .find(|v| v.key() == s.trim())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "values must be score, p_value, q_value or calibrated, got {s:?}"
                ))
            })
    }
}

/// The statistics a fill adds: permutations of the null, their seed and level.
#[derive(Debug, Clone, Copy)]
pub struct NullSpec {
    pub permutations: usize,
    pub seed: u64,
    pub alpha: f64,
}

/// What a trend relates (the model selectors as the user wrote them).
#[derive(Debug, Clone)]
pub struct TrendQuery<'a> {
    pub x: &'a str,
    pub y: &'a str,
    pub perf: &'a str,
    pub lower_is_better: Option<bool>,
    pub per_y: bool,
    pub bootstrap: usize,
    pub seed: u64,
}

/// One model pair's layer × layer table with its best cell.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTable {
    pub x_model: String,
    pub x_checkpoint: String,
    pub y_model: String,
    pub y_checkpoint: String,
    pub x_layers: usize,
    pub y_layers: usize,
    /// `values[i][j]`: x layer i with y layer j (None when not cached).
    pub values: Vec<Vec<Option<f64>>>,
    /// The best cell (x layer, y layer, value).
    pub best: Option<(usize, usize, f64)>,
}

impl View {
    /// The cache's name for the preparation.
    pub fn kind(&self) -> String {
        self.prep.kind()
    }

    /// The metric as charts title it, with the layer aggregate unless it is the max.
    pub fn label(&self) -> String {
        match self.reduce {
            Reduce::Max => self.spec.metric.name().to_string(),
            r => format!("{} ({})", self.spec.metric, r.key()),
        }
    }

    /// The `prh align` flags that compute this view's cells.
    pub fn flags(&self) -> String {
        let (spec, prep) = (&self.spec, self.prep);
        let mut s = spec.flags();
        if self.reduce != Reduce::Max {
            s.push_str(&format!(" --reduce {}", self.reduce.key()));
        }
        if prep == Prep::NONE {
            s.push_str(" --no-prep");
        }
        match prep.scope {
            ClampScope::Auto => {}
            ClampScope::Checkpoint => s.push_str(" --clamp-scope checkpoint"),
            ClampScope::Layer => s.push_str(" --clamp-scope layer"),
        }
        if prep.rule != ClampRule::Exact && prep.clamp_q.is_some() {
            s.push_str(&format!(" --clamp-rule {}", prep.rule.name()));
        }
        s
    }

    /// Computes the missing cells of `x` × `y` (and the null, when asked) through the sweep
    /// engine; returns the sweep's pair results.
    pub fn fill(
        &self,
        reg: &mut Registry,
        (x, y): (Selector, Selector),
        all_checkpoints: bool,
        null: Option<NullSpec>,
        progress: &dyn Progress,
    ) -> Result<Vec<sweep::PairResult>> {
        let null = null.unwrap_or(NullSpec {
            permutations: 0,
            seed: 0,
            alpha: crate::stats::DEFAULT_ALPHA,
        });
        let req = SweepRequest {
            x,
            y,
            dataset: None,
            pool: None,
            all_checkpoints,
            x_checkpoint: None,
            specs: vec![self.spec],
            prep: self.prep,
            mem_budget: crate::metrics::derived::DEFAULT_BUDGET,
            null: null.permutations,
            bootstrap: 0,
            seed: null.seed,
            alpha: null.alpha,
            reduce: self.reduce,
        };
        sweep::sweep(reg, &req, progress)
    }

    /// The cached score of every x checkpoint with every y checkpoint (x ≠ y); refuses with
    /// [`Error::NotCached`] naming `hint` (the `prh align` arguments) when any is missing.
    pub fn pairs(
        &self,
        reg: &Registry,
        x_ids: &[CheckpointId],
        y_ids: &[CheckpointId],
        hint: &str,
    ) -> Result<Vec<PairScore>> {
        let command = format!("prh align {} {hint}", self.flags());
        analysis::cached_pairs(
            reg,
            &self.spec,
            &self.kind(),
            self.reduce,
            x_ids,
            y_ids,
            &command,
        )
    }

    /// The model × model table of the x and y selections at their latest checkpoints; with
    /// `perf`, rows and columns each ordered worst to best by a score of their own models
    /// (`perf` where they have it).
    pub fn matrix(
        &self,
        reg: &Registry,
        (x, y): (&str, &str),
        perf: Option<&str>,
        lower_is_better: Option<bool>,
    ) -> Result<Matrix> {
        let mut xm = sweep::select_models(reg, &x.parse()?)?;
        let mut ym = sweep::select_models(reg, &y.parse()?)?;
        let mut order = [None, None];
        if let Some(p) = perf {
            // Each side by a score its own models have: `perf` where they have it (with the
            // direction given), else theirs (with its stored direction).
            for (side, models) in [&mut xm, &mut ym].into_iter().enumerate() {
                if let Some(own) = analysis::own_score(reg, models, p)? {
                    let lower = if own == p { lower_is_better } else { None };
                    *models = analysis::order_by_perf(reg, models, &own, lower)?;
                    order[side] = Some(own);
                }
            }
        }
        let (x_ids, y_ids) = (latest_ids(reg, &xm)?, latest_ids(reg, &ym)?);
        let pairs = self.pairs(reg, &x_ids, &y_ids, &format!("--x {x} --y {y}"))?;
        let [row_order, col_order] = order;
        Ok(Matrix {
            row_order,
            col_order,
            ..analysis::matrix(&pairs, &xm, &ym)
        })
    }

    /// The model × model table of `value` at the latest checkpoints: with no permutations and
    /// `Score`, the cached scores ([`View::matrix`]); else a statistic of each pair's
    /// permutation null, filling what is missing, cells and `null.permutations` draws per pair
    /// (both cached). A q-value is taken among the table's pairs.
    pub fn value_matrix(
        &self,
        reg: &mut Registry,
        (x, y): (&str, &str),
        (perf, lower_is_better): (Option<&str>, Option<bool>),
        null: NullSpec,
        value: CellValue,
        progress: &dyn Progress,
    ) -> Result<Matrix> {
        if null.permutations == 0 {
            if value != CellValue::Score {
                return Err(Error::Invalid(format!(
                    "a matrix of {} needs a permutation null: give the number of permutations (--null 1000)",
                    value.key()
                )));
            }
            return self.matrix(reg, (x, y), perf, lower_is_better);
        }
        let results = self.fill(reg, (x.parse()?, y.parse()?), false, Some(null), progress)?;
        let mut m = self.matrix(reg, (x, y), perf, lower_is_better)?;
        let of: HashMap<(&str, &str), Option<f64>> = results
            .iter()
            .map(|r| ((r.x_model.as_str(), r.y_model.as_str()), value.of(r)))
            .collect();
        for (row, vals) in m.rows.iter().zip(m.values.iter_mut()) {
            for (col, v) in m.cols.iter().zip(vals.iter_mut()) {
                *v = of.get(&(row.as_str(), col.as_str())).copied().flatten();
            }
        }
        m.holds = (value != CellValue::Score).then_some(value.key());
        Ok(m)
    }

    /// The rows `prh matrix --format json` prints: one object per row model with its
    /// aggregate and one field per column model (and `values`, what the cells hold, when they
    /// are not the scores).
    pub fn matrix_rows(&self, m: &Matrix) -> Vec<Value> {
        m.rows
            .iter()
            .zip(&m.values)
            .map(|(r, vals)| {
                let mut o = serde_json::Map::new();
                o.insert("model".into(), r.clone().into());
                o.insert("reduce".into(), self.reduce.key().into());
                o.insert("prep".into(), self.prep.kind().into());
                if let Some(h) = m.holds {
                    o.insert("values".into(), h.into());
                }
                for (c, v) in m.cols.iter().zip(vals) {
                    o.insert(c.clone(), v.map(Value::from).unwrap_or(Value::Null));
                }
                Value::Object(o)
            })
            .collect()
    }

    /// `model`'s checkpoints (in step order) against the latest checkpoints of `against`.
    pub fn trajectory(
        &self,
        reg: &Registry,
        model: &str,
        against: &str,
    ) -> Result<Vec<TrajectoryPoint>> {
        let model = &crate::names::nfc(model);
        let cks = reg.catalog.checkpoints(Some(model))?;
        if cks.is_empty() {
            return Err(Error::NotFound(format!("model {model} has no checkpoints")));
        }
        let refs = sweep::select_models(reg, &against.parse()?)?;
        let x_ids: Vec<CheckpointId> = cks.iter().map(|c| c.id).collect();
        let hint = format!("--x {model} --y {against} --all-checkpoints");
        let mut pairs = self.pairs(reg, &x_ids, &latest_ids(reg, &refs)?, &hint)?;
        let steps: HashMap<CheckpointId, Option<i64>> =
            cks.iter().map(|c| (c.id, c.step)).collect();
        for p in &mut pairs {
            p.x_step = steps.get(&p.x_checkpoint_id).copied().flatten();
        }
        Ok(analysis::trajectory(&pairs))
    }

    /// Alignment within performance bins of one selection (`prh trend --within`): the `x`
    /// models ranked by `perf` into `bins` bins, each bin's mean alignment among its members.
    pub fn within(
        &self,
        reg: &Registry,
        x: &str,
        perf: &str,
        lower_is_better: Option<bool>,
        bins: usize,
    ) -> Result<Vec<analysis::Bin>> {
        let xm = sweep::select_models(reg, &x.parse()?)?;
        let x_ids = latest_ids(reg, &xm)?;
        let pairs = self.pairs(reg, &x_ids, &x_ids, &format!("--x {x} --y {x}"))?;
        let models: Vec<(String, CheckpointId)> = xm.into_iter().zip(x_ids).collect();
        analysis::within(reg, &pairs, &models, perf, lower_is_better, bins)
    }

    /// The trend request for `t` (model lists resolved).
    pub fn trend_request(&self, reg: &Registry, t: &TrendQuery) -> Result<TrendRequest> {
        Ok(TrendRequest {
            spec: self.spec,
            prep: self.kind(),
            reduce: self.reduce,
            x: sweep::select_models(reg, &t.x.parse()?)?,
            y: sweep::select_models(reg, &t.y.parse()?)?,
            perf: t.perf.to_string(),
            lower_is_better: t.lower_is_better,
            per_y: t.per_y,
            bootstrap: t.bootstrap,
            seed: t.seed,
        })
    }

    /// Alignment vs. performance on the cached (raw) scores.
    pub fn trend(&self, reg: &Registry, t: &TrendQuery) -> Result<Trend> {
        let req = self.trend_request(reg, t)?;
        let (x_ids, y_ids) = (latest_ids(reg, &req.x)?, latest_ids(reg, &req.y)?);
        let hint = format!("--x {} --y {}", t.x, t.y);
        let pairs = self.pairs(reg, &x_ids, &y_ids, &hint)?;
        analysis::trend(reg, &req, &pairs)
    }

    /// The trend on raw and on permutation-calibrated scores, from one sweep with a null
    /// (computing what is missing, null included).
    pub fn calibrated_trend(
        &self,
        reg: &mut Registry,
        t: &TrendQuery,
        null: NullSpec,
        progress: &dyn Progress,
    ) -> Result<(Trend, Trend)> {
        let sel = (t.x.parse()?, t.y.parse()?);
        let results = self.fill(reg, sel, false, Some(null), progress)?;
        let req = self.trend_request(reg, t)?;
        let raw = analysis::trend(reg, &req, &pair_scores(&results, |r| r.score))?;
        let cal = pair_scores(&results, |r| r.calibrated.unwrap_or(f64::NAN));
        Ok((raw, analysis::trend(reg, &req, &cal)?))
    }

    /// One model pair's layer × layer table at their latest checkpoints.
    pub fn layers(&self, reg: &Registry, x_model: &str, y_model: &str) -> Result<LayerTable> {
        let names = [x_model.to_string(), y_model.to_string()];
        let ids = latest_ids(reg, &names)?;
        let cells = query::layer_cells(
            reg,
            self.spec.metric,
            &self.spec.params_key(),
            &self.kind(),
            ids[0],
            ids[1],
        )?;
        if cells.is_empty() {
            return Err(Error::NotCached {
                pairs: 1,
                what: format!("{} ({})", self.spec.metric, self.spec.params_key()),
                command: format!("prh align {} --x {x_model} --y {y_model}", self.flags()),
            });
        }
        let count = |i: usize| {
            reg.catalog
                .reps(&crate::catalog::RepFilter {
                    checkpoint_id: Some(ids[i]),
                    ..Default::default()
                })
                .map(|r| r.iter().map(|r| r.layer as usize + 1).max().unwrap_or(0))
        };
        let (nx, ny) = (count(0)?, count(1)?);
        let mut values = vec![vec![None; ny]; nx];
        let mut best: Option<(usize, usize, f64)> = None;
        for (i, j, v) in cells {
            let (i, j) = (i as usize, j as usize);
            if i < nx && j < ny {
                values[i][j] = Some(v);
                if best.is_none_or(|b| v > b.2) {
                    best = Some((i, j, v));
                }
            }
        }
        let ck = |i: usize| -> Result<String> {
            Ok(reg
                .catalog
                .checkpoints(Some(&names[i]))?
                .into_iter()
                .find(|c| c.id == ids[i])
                .map(|c| c.checkpoint)
                .unwrap_or_default())
        };
        Ok(LayerTable {
            x_model: names[0].clone(),
            x_checkpoint: ck(0)?,
            y_model: names[1].clone(),
            y_checkpoint: ck(1)?,
            x_layers: nx,
            y_layers: ny,
            values,
            best,
        })
    }
}

/// Model-pair scores from sweep results (a model with itself left out), valued by `value`.
pub fn pair_scores(
    r: &[sweep::PairResult],
    value: impl Fn(&sweep::PairResult) -> f64,
) -> Vec<PairScore> {
    r.iter()
        .filter(|p| p.x_model != p.y_model)
        .map(|p| PairScore {
            x_model: p.x_model.clone(),
            x_checkpoint: p.x_checkpoint.clone(),
            x_checkpoint_id: p.x_checkpoint_id,
            x_step: None,
            y_model: p.y_model.clone(),
            y_checkpoint_id: p.y_checkpoint_id,
            score: value(p),
        })
        .collect()
}

/// The latest checkpoint of each model, in the given order.
pub fn latest_ids(reg: &Registry, models: &[String]) -> Result<Vec<CheckpointId>> {
    let ids = analysis::latest(reg, models)?;
    Ok(models.iter().map(|m| ids[m]).collect())
}
