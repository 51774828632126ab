//! A metric's identity: its name and parameters ([`MetricSpec`]), written and read in every
//! form prh uses — the cache key ([`MetricSpec::params_key`], read back by
//! [`MetricSpec::from_key`]), the JSON of every answer ([`MetricSpec::params_json`]), the
//! command-line flags that reproduce it ([`MetricSpec::flags`]), and user options by name
//! ([`MetricSpec::from_options`], the one parser behind the CLI, the dashboard and Python) —
//! and its range ([`MetricSpec::max_attainable`]). A new metric's parameters are added here
//! and nowhere else.

use crate::error::{Error, Result};

use super::{ALL, Metric};

/// Kernel of the CKA family.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Kernel {
    /// K = XXᵀ.
    Linear,
    /// exp(−‖xi − xj‖² / (2σ²)).
    Rbf {
        /// The width σ.
        sigma: f64,
    },
    /// exp(−‖xi − xj‖² / (2σ²)) with each representation's own σ: the square root of the
    /// median of its n² squared distances (the diagonal's zeros included; the lower middle
    /// value when n² is even), the median heuristic of Aristotelian's `cka_rbf`.
    RbfMedian,
}

/// How equally similar neighbours at the k boundary are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum TieBreak {
    /// The lower sample index wins: deterministic, and the official number whenever no row
    /// ties at the boundary.
    #[default]
    LowerIndex,
    /// The exact expectation over uniformly random tie-breaking (mutual_knn, cycle_knn).
    Expected,
}

/// A metric with its parameters (official defaults: k = 10, cca_dim = 10, σ = 1.0).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSpec {
    /// The metric.
    pub metric: Metric,
    /// Neighbourhood size for kNN metrics and cknna.
    pub k: usize,
    /// Kernel for cka / unbiased_cka.
    pub kernel: Kernel,
    /// Subspace size for svcca.
    pub cca_dim: usize,
    /// Ridge strength for linear_r2 (relative to the mean kernel diagonal).
    pub ridge: f64,
    /// Reproduce the official lcs_knn / edit_distance_knn as they run with `pymp` installed
    /// (only the first ⌈n/4⌉ rows are counted; see [`knn::rows_counted`]).
    pub emulate_pymp: bool,
    /// Treatment of ties at the k boundary.
    pub ties: TieBreak,
}

impl MetricSpec {
    /// A metric with the official default parameters.
    pub fn new(metric: Metric) -> Self {
        MetricSpec {
            metric,
            k: 10,
            kernel: Kernel::Linear,
            cca_dim: 10,
            ridge: 0.1,
            emulate_pymp: false,
            ties: TieBreak::LowerIndex,
        }
    }

    /// Canonical parameter text: only the parameters the metric uses, in a fixed order, so
    /// equal computations have equal keys (e.g. `k=10`, `kernel=rbf,sigma=1`).
    pub fn params_key(&self) -> String {
        let mut p: Vec<String> = Vec::new();
        if self.metric.uses_k() {
            p.push(format!("k={}", self.k));
        }
        match self.metric {
            Metric::Cka | Metric::UnbiasedCka => match self.kernel {
                Kernel::Linear => p.push("kernel=linear".into()),
                Kernel::Rbf { sigma } => p.push(format!("kernel=rbf,sigma={sigma}")),
                Kernel::RbfMedian => p.push("kernel=rbf,sigma=median".into()),
            },
            Metric::Svcca => p.push(format!("cca_dim={}", self.cca_dim)),
            Metric::LinearR2 => p.push(format!("ridge={}", self.ridge)),
            Metric::LcsKnn | Metric::EditDistanceKnn if self.emulate_pymp => {
                p.push("emulate_pymp=1".into())
            }
            _ => {}
        }
        if self.ties == TieBreak::Expected && self.metric.uses_k() {
            p.push("ties=expected".into());
        }
        p.join(",")
    }

    /// Parameters as a JSON object for output.
    pub fn params_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if self.metric.uses_k() {
            m.insert("k".into(), self.k.into());
        }
        match self.metric {
            Metric::Cka | Metric::UnbiasedCka => match self.kernel {
                Kernel::Linear => {
                    m.insert("kernel".into(), "linear".into());
                }
                Kernel::Rbf { sigma } => {
                    m.insert("kernel".into(), "rbf".into());
                    m.insert("sigma".into(), sigma.into());
                }
                Kernel::RbfMedian => {
                    m.insert("kernel".into(), "rbf".into());
                    m.insert("sigma".into(), "median".into());
                }
            },
            Metric::Svcca => {
                m.insert("cca_dim".into(), self.cca_dim.into());
            }
            Metric::LinearR2 => {
                m.insert("ridge".into(), self.ridge.into());
            }
            Metric::LcsKnn | Metric::EditDistanceKnn if self.emulate_pymp => {
                m.insert("emulate_pymp".into(), true.into());
            }
            _ => {}
        }
        if self.ties == TieBreak::Expected && self.metric.uses_k() {
            m.insert("ties".into(), "expected".into());
        }
        serde_json::Value::Object(m)
    }

    /// Checks the parameters against n before any work is done.
    pub fn validate(&self, n: usize) -> Result<()> {
        let name = self.metric.name();
        if self.metric.uses_k() {
            if self.k == 0 {
                return Err(Error::metric(name, "k must be at least 1"));
            }
            if self.k >= n {
                return Err(Error::metric(
                    name,
                    format!(
                        "n = {n} samples is too few for k = {} (needs n ≥ k + 1)",
                        self.k
                    ),
                ));
            }
        }
        if self.ties == TieBreak::Expected
            && !matches!(self.metric, Metric::MutualKnn | Metric::CycleKnn)
        {
            return Err(Error::metric(
                name,
                "--ties expected is defined for mutual_knn and cycle_knn (set metrics with an exact expectation); the others also depend on the order inside ties",
            ));
        }
        if self.metric == Metric::Cknna && self.k < 2 {
            return Err(Error::metric(name, "cknna needs k ≥ 2"));
        }
        if matches!(
            self.metric,
            Metric::Cka | Metric::UnbiasedCka | Metric::Cknna
        ) && n < 4
        {
            return Err(Error::metric(name, "needs at least 4 samples"));
        }
        if let Kernel::Rbf { sigma } = self.kernel
            && !(sigma > 0.0 && sigma.is_finite())
        {
            return Err(Error::metric(name, "rbf sigma must be a positive number"));
        }
        if self.metric == Metric::Svcca && self.cca_dim == 0 {
            return Err(Error::metric(name, "cca_dim must be at least 1"));
        }
        if self.metric == Metric::LinearR2 && (self.ridge.is_nan() || self.ridge <= 0.0) {
            return Err(Error::metric(name, "ridge must be positive"));
        }
        Ok(())
    }

    /// The highest value the metric can take: the top of the calibrated scale (Gröger, Wen &
    /// Brbić: (raw − τ) / (max − τ)). lcs_knn counts neighbours (at most k); every other
    /// metric is a similarity of at most 1.
    pub fn max_attainable(&self) -> f64 {
        match self.metric {
            Metric::LcsKnn => self.k as f64,
            _ => 1.0,
        }
    }

    /// The spec a cache key names: `metric` with its canonical `params` (see
    /// [`MetricSpec::params_key`]); `None` for a key this prh would not write.
    pub fn from_key(metric: &str, params: &str) -> Option<MetricSpec> {
        let m: Metric = metric.parse().ok()?;
        let mut s = MetricSpec::new(m);
        let mut kernel_rbf = false;
        for kv in params.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=')?;
            match k {
                "k" => s.k = v.parse().ok()?,
                "kernel" => kernel_rbf = v == "rbf",
                "sigma" if v == "median" => s.kernel = Kernel::RbfMedian,
                "sigma" => {
                    s.kernel = Kernel::Rbf {
                        sigma: v.parse().ok()?,
                    }
                }
                "cca_dim" => s.cca_dim = v.parse().ok()?,
                "ridge" => s.ridge = v.parse().ok()?,
                "emulate_pymp" => s.emulate_pymp = v == "1",
                "ties" if v == "expected" => s.ties = TieBreak::Expected,
                _ => return None,
            }
        }
        if !kernel_rbf {
            s.kernel = Kernel::Linear;
        }
        (s.params_key() == params).then_some(s)
    }

    /// The spec for `metric` with the options a user gave by name ([`OPTIONS`]; `get` returns
    /// a value as text, `None` when not given, and the official default applies). The one
    /// parser of user options: the CLI, the dashboard's query strings and Python's keyword
    /// arguments all come through here, so every parameter reaches all three. Values are
    /// checked for form here and against n by [`MetricSpec::validate`].
    pub fn from_options(metric: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<MetricSpec> {
        let metric: Metric = metric.trim().parse()?;
        let mut s = MetricSpec::new(metric);
        let given = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        fn num<T: std::str::FromStr>(name: &str, v: &str, what: &str) -> Result<T> {
            v.parse()
                .map_err(|_| Error::Invalid(format!("{name} must be {what}, got {v:?}")))
        }
        if let Some(v) = given("k") {
            s.k = num("k", &v, "a positive integer")?;
        }
        if let Some(v) = given("cca_dim") {
            s.cca_dim = num("cca_dim", &v, "a positive integer")?;
        }
        if let Some(v) = given("ridge") {
            s.ridge = num("ridge", &v, "a positive number")?;
        }
        let rbf = match given("sigma").as_deref() {
            Some("median") => Kernel::RbfMedian,
            Some(v) => Kernel::Rbf {
                sigma: num("sigma", v, "a positive number or median")?,
            },
            None => Kernel::Rbf { sigma: 1.0 },
        };
        s.kernel = match given("kernel").as_deref() {
            None | Some("linear") => Kernel::Linear,
            Some("rbf") => rbf,
            Some(k) => {
                return Err(Error::Invalid(format!(
                    "kernel must be linear or rbf, got {k:?}"
                )));
            }
        };
        s.ties = match given("ties").as_deref() {
            None | Some("lower") => TieBreak::LowerIndex,
            Some("expected") => TieBreak::Expected,
            Some(t) => {
                return Err(Error::Invalid(format!(
                    "ties must be lower or expected, got {t:?}"
                )));
            }
        };
        s.emulate_pymp = match given("emulate_pymp").as_deref() {
            None | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(v) => {
                return Err(Error::Invalid(format!(
                    "emulate_pymp must be true or false, got {v:?}"
                )));
            }
        };
        Ok(s)
    }

    /// The command-line flags that give this spec (`--metric cka --kernel rbf --sigma 2`):
    /// each parameter the metric uses, so a printed command reproduces the cached key.
    pub fn flags(&self) -> String {
        let mut s = format!("--metric {}", self.metric);
        if self.ties == TieBreak::Expected && self.metric.uses_k() {
            s.push_str(" --ties expected");
        }
        if self.metric.uses_k() {
            s.push_str(&format!(" --k {}", self.k));
        }
        match self.metric {
            Metric::Cka | Metric::UnbiasedCka => match self.kernel {
                Kernel::Rbf { sigma } => s.push_str(&format!(" --kernel rbf --sigma {sigma}")),
                Kernel::RbfMedian => s.push_str(" --kernel rbf --sigma median"),
                Kernel::Linear => {}
            },
            Metric::Svcca => s.push_str(&format!(" --cca-dim {}", self.cca_dim)),
            Metric::LinearR2 => s.push_str(&format!(" --ridge {}", self.ridge)),
            Metric::LcsKnn | Metric::EditDistanceKnn if self.emulate_pymp => {
                s.push_str(" --emulate-pymp")
            }
            _ => {}
        }
        s
    }
}

/// A metric option a user can give: its name (the CLI flag with `--` and `-` for `_`, the
/// dashboard's query parameter, Python's keyword), its default, and what it sets.
pub struct OptionDoc {
    /// The option's name (`cca_dim`; the CLI flag is `--cca-dim`).
    pub name: &'static str,
    /// The official default.
    pub default: &'static str,
    /// What it sets.
    pub help: &'static str,
}

/// Every metric option [`MetricSpec::from_options`] reads, with its official default.
pub const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "k",
        default: "10",
        help: "neighbourhood size for the kNN metrics and cknna",
    },
    OptionDoc {
        name: "kernel",
        default: "linear",
        help: "kernel for cka and unbiased_cka: linear or rbf",
    },
    OptionDoc {
        name: "sigma",
        default: "1",
        help: "RBF kernel width σ",
    },
    OptionDoc {
        name: "cca_dim",
        default: "10",
        help: "subspace size for svcca",
    },
    OptionDoc {
        name: "ridge",
        default: "0.1",
        help: "ridge strength for linear_r2, relative to the mean kernel diagonal",
    },
    OptionDoc {
        name: "ties",
        default: "lower",
        help: "neighbours tied at the k boundary: lower (lower index wins) or expected",
    },
    OptionDoc {
        name: "emulate_pymp",
        default: "false",
        help: "count only the first ⌈n/4⌉ rows of lcs_knn / edit_distance_knn, as official code with pymp",
    },
];

/// Every metric with each of its parameters set away from the default, and the defaults:
/// the specs the round-trip tests cover.
pub fn examples() -> Vec<MetricSpec> {
    let mut out = Vec::new();
    for &m in ALL {
        let base = MetricSpec::new(m);
        out.push(base);
        if m.uses_k() {
            out.push(MetricSpec { k: 3, ..base });
        }
        if matches!(m, Metric::MutualKnn | Metric::CycleKnn) {
            out.push(MetricSpec {
                ties: TieBreak::Expected,
                ..base
            });
        }
        match m {
            Metric::Cka | Metric::UnbiasedCka => out.push(MetricSpec {
                kernel: Kernel::Rbf { sigma: 2.5 },
                ..base
            }),
            Metric::Svcca => out.push(MetricSpec { cca_dim: 4, ..base }),
            Metric::LinearR2 => out.push(MetricSpec {
                ridge: 0.25,
                ..base
            }),
            Metric::LcsKnn | Metric::EditDistanceKnn => out.push(MetricSpec {
                emulate_pymp: true,
                ..base
            }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `--name value` pairs of a flag string as options.
    fn options_of(flags: &str) -> (String, Vec<(String, String)>) {
        let words: Vec<&str> = flags.split_whitespace().collect();
        let mut metric = String::new();
        let mut opts = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let name = words[i].trim_start_matches("--").replace('-', "_");
            let value = words.get(i + 1).filter(|v| !v.starts_with("--"));
            match (name.as_str(), value) {
                ("metric", Some(v)) => metric = v.to_string(),
                (_, Some(v)) => opts.push((name, v.to_string())),
                (_, None) => opts.push((name, "true".into())),
            }
            i += 1 + value.is_some() as usize;
        }
        (metric, opts)
    }

    #[test]
    fn every_form_of_a_spec_reads_back_as_the_spec() {
        let specs = examples();
        assert!(specs.len() >= 24, "{}", specs.len());
        for s in specs {
            // The cache key.
            assert_eq!(
                MetricSpec::from_key(s.metric.name(), &s.params_key()),
                Some(s),
                "{s:?}"
            );
            // The flags, read as options by name.
            let (metric, opts) = options_of(&s.flags());
            let get = |n: &str| opts.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let back = MetricSpec::from_options(&metric, &get).unwrap();
            assert_eq!(back.params_key(), s.params_key(), "{}", s.flags());
            // The JSON, read as options by name.
            let json = s.params_json();
            let get = |n: &str| {
                json.get(n).map(|v| match v {
                    serde_json::Value::String(t) => t.clone(),
                    v => v.to_string(),
                })
            };
            let back = MetricSpec::from_options(s.metric.name(), &get).unwrap();
            assert_eq!(back.params_key(), s.params_key(), "{json}");
            // Every option the forms use is documented.
            for (name, _) in &opts {
                assert!(
                    OPTIONS.iter().any(|o| o.name == name),
                    "{name} undocumented"
                );
            }
        }
    }

    #[test]
    fn unknown_or_malformed_options_name_the_value() {
        let get = |v: &'static str| move |n: &str| (n == "k").then(|| v.to_string());
        let e = MetricSpec::from_options("mutual_knn", &get("ten")).unwrap_err();
        assert_eq!(e.to_string(), "k must be a positive integer, got \"ten\"");
        let e = MetricSpec::from_options("no_such", &|_| None).unwrap_err();
        assert!(
            e.to_string().starts_with("unknown metric \"no_such\""),
            "{e}"
        );
        assert!(MetricSpec::from_key("cka", "kernel=linear,k=10").is_none());
    }
}
