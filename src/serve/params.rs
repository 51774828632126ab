//! Query-string parameters of the chart pages and their API twins, with defaults read from
//! the registry so that a bare `/trend` shows something sensible.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::layers::Reduce;
use crate::metrics::{ClampRule, MetricSpec, Prep};
use crate::registry::Registry;
use crate::views::{CellValue, View};

/// Everything a chart page may be asked (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Params {
    pub metric: Option<String>,
    pub k: Option<String>,
    pub kernel: Option<String>,
    pub sigma: Option<String>,
    pub cca_dim: Option<String>,
    pub ridge: Option<String>,
    pub ties: Option<String>,
    pub emulate_pymp: Option<String>,
    pub reduce: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
    pub perf: Option<String>,
    pub lower_is_better: Option<String>,
    pub calibrated: Option<String>,
    pub model: Option<String>,
    pub against: Option<String>,
    pub null: Option<String>,
    pub seed: Option<String>,
    /// platonic-rep's clamp convention: `exact` (default) or `sample-mean`.
    pub clamp_rule: Option<String>,
    /// What the matrix's cells hold: `score` (default), `p_value`, `q_value`, `calibrated`.
    pub values: Option<String>,
}

/// The parameters with defaults filled in.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub view: View,
    pub x: String,
    pub y: String,
    pub perf: Option<String>,
    pub lower_is_better: Option<bool>,
    pub calibrated: bool,
    pub model: Option<String>,
    pub against: String,
    pub null: usize,
    pub seed: u64,
    /// What the matrix's cells hold.
    pub values: CellValue,
    /// Choices for the page's selectors.
    pub choices: Choices,
}

/// What the registry offers to choose from.
#[derive(Debug, Clone, Default)]
pub(super) struct Choices {
    pub metrics: Vec<String>,
    pub selectors: Vec<String>,
    pub scores: Vec<String>,
    pub models: Vec<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("on" | "true" | "1" | "yes"))
}

fn number<T: std::str::FromStr>(what: &str, v: &Option<String>, default: T) -> Result<T> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| Error::Invalid(format!("{what} must be a number, got {s:?}"))),
    }
}

/// [`number`] within `lo..=hi` (what one request may ask the server to compute).
fn ranged<T>(what: &str, v: &Option<String>, default: T, lo: T, hi: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    within(what, number(what, v, default)?, lo, hi)
}

/// `n` when it lies in `lo..=hi`.
fn within<T: PartialOrd + std::fmt::Display + Copy>(what: &str, n: T, lo: T, hi: T) -> Result<T> {
    if n < lo || n > hi {
        return Err(Error::Invalid(format!(
            "{what} = {n} is out of range: give {lo} to {hi}"
        )));
    }
    Ok(n)
}

/// Most permutations one request may ask for (the command line takes more).
pub(super) const MAX_NULL: usize = 10_000;
/// Largest neighbourhood one request may ask for.
pub(super) const MAX_K: usize = 1_000;

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Params {
    /// The metric option `name` (see [`crate::metrics::spec::OPTIONS`]) as the query gave it.
    fn option(&self, name: &str) -> Option<&Option<String>> {
        Some(match name {
            "k" => &self.k,
            "kernel" => &self.kernel,
            "sigma" => &self.sigma,
            "cca_dim" => &self.cca_dim,
            "ridge" => &self.ridge,
            "ties" => &self.ties,
            "emulate_pymp" => &self.emulate_pymp,
            _ => return None,
        })
    }

    /// Fills what is missing from the registry: the first cached metric (mutual_knn when
    /// cached), the first two modalities as x and y, the first score of the x models.
    pub fn resolve(&self, reg: &Registry) -> Result<Resolved> {
        let models = reg.catalog.models()?;
        let modalities: BTreeSet<&str> = models.iter().map(|m| m.modality.as_str()).collect();
        let families: BTreeSet<&str> = models.iter().filter_map(|m| m.family.as_deref()).collect();
        let cached: BTreeSet<String> = reg
            .catalog
            .cell_metrics()?
            .into_iter()
            .map(|m| m.metric)
            .collect();
        let metric_name = given(&self.metric).unwrap_or_else(|| {
            if cached.is_empty() || cached.contains("mutual_knn") {
                "mutual_knn".into()
            } else {
                cached.iter().next().cloned().unwrap_or_default()
            }
        });
        let spec = MetricSpec::from_options(&metric_name, &|name| given(self.option(name)?))?;
        // k as the one parser read it, within what one request may ask for.
        within("k", spec.k, 1, MAX_K)?;
        let reduce: Reduce = match given(&self.reduce) {
            Some(r) => r.parse()?,
            None => Reduce::Max,
        };
        let mods: Vec<&str> = modalities.iter().copied().collect();
        let (dx, dy) = match mods.as_slice() {
            [a, b, ..] => (format!("modality={a}"), format!("modality={b}")),
            _ => ("all".to_string(), "all".to_string()),
        };
        let x = given(&self.x).unwrap_or(dx);
        let y = given(&self.y).unwrap_or(dy.clone());
        let all_scores = reg.catalog.scores(None)?;
        let x_models = crate::sweep::select_models(reg, &x.parse()?).unwrap_or_default();
        let perf = given(&self.perf).or_else(|| {
            all_scores
                .iter()
                .find(|s| x_models.contains(&s.model))
                .map(|s| s.name.clone())
        });
        let scores: BTreeSet<String> = all_scores.into_iter().map(|s| s.name).collect();
        // The trajectory's model: the one with the most checkpoints.
        let checkpoints = reg.catalog.checkpoints(None)?;
        let model = given(&self.model).or_else(|| {
            models
                .iter()
                .max_by_key(|m| {
                    let n = checkpoints.iter().filter(|c| c.model == m.name).count();
                    (n, std::cmp::Reverse(m.name.clone()))
                })
                .map(|m| m.name.clone())
        });
        let against = given(&self.against).unwrap_or_else(|| {
            let own = models
                .iter()
                .find(|m| Some(&m.name) == model.as_ref())
                .map(|m| m.modality.clone());
            match mods.iter().find(|m| Some(m.to_string()) != own) {
                Some(m) if mods.len() > 1 => format!("modality={m}"),
                _ => dy,
            }
        });
        let mut selectors = vec!["all".to_string()];
        selectors.extend(modalities.iter().map(|m| format!("modality={m}")));
        selectors.extend(families.iter().map(|f| format!("family={f}")));
        let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        selectors.extend(names.iter().cloned());
        let mut metrics: Vec<String> = cached.into_iter().collect();
        if !metrics.contains(&metric_name) {
            metrics.push(metric_name);
        }
        Ok(Resolved {
            view: View {
                spec,
                prep: Prep {
                    rule: match given(&self.clamp_rule).as_deref() {
                        None | Some("exact") => ClampRule::Exact,
                        Some("sample-mean") => ClampRule::SampleMean,
                        Some(other) => {
                            return Err(Error::Invalid(format!(
                                "clamp_rule must be exact or sample-mean, got {other:?}"
                            )));
                        }
                    },
                    ..Prep::OFFICIAL
                },
                reduce,
            },
            x,
            y,
            perf,
            lower_is_better: flag(&self.lower_is_better).then_some(true),
            calibrated: flag(&self.calibrated),
            model,
            against,
            null: ranged("null", &self.null, 200usize, 1, MAX_NULL)?,
            seed: number("seed", &self.seed, 0u64)?,
            values: match given(&self.values) {
                Some(v) => v.parse()?,
                None => CellValue::Score,
            },
            choices: Choices {
                metrics,
                selectors,
                scores: scores.into_iter().collect(),
                models: names,
            },
        })
    }
}

/// Percent-encodes a query-string value.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
