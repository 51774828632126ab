//! The `cells` frame: cached cells scanned in parallel and decoded through the key
//! dictionaries once, not per row.

use super::*;

/// Cached layer-pair values expanded to representation pairs: `frame` has x_rep, y_rep,
/// x_set, y_set, x_layer, y_layer, key, value; `keys` maps key to metric, params, prep.
pub struct Cells {
    /// One row per cell.
    pub frame: DataFrame,
    /// What each key id stands for.
    pub keys: DataFrame,
}

impl Cells {
    /// The documented `cells` table: x_rep, y_rep, metric, params, prep, value.
    pub fn table(&self) -> LazyFrame {
        use polars::prelude::col as c;
        self.frame
            .clone()
            .lazy()
            .inner_join(self.keys.clone().lazy(), c("key"), c("key"))
            .select([
                c("x_rep"),
                c("y_rep"),
                c("metric"),
                c("params"),
                c("prep"),
                c("value"),
            ])
    }
}

/// One scan's share of the cells.
#[derive(Default)]
pub(super) struct Part {
    pub(super) xs: Vec<u32>,
    pub(super) ys: Vec<u32>,
    pub(super) xset: Vec<u32>,
    pub(super) yset: Vec<u32>,
    pub(super) xl: Vec<i64>,
    pub(super) yl: Vec<i64>,
    pub(super) key: Vec<u32>,
    pub(super) value: Vec<f64>,
}

/// A cache key side (`cell_sides`) as a scan needs it: the representations of its blob (with
/// their datasets), its clamp and its prep kind (an index into [`Dictionary::kinds`]).
pub(super) struct Side<'i> {
    pub(super) hash: String,
    pub(super) reps: &'i [(u32, i64)],
    pub(super) clamp: Option<prep::KeyClamp>,
    pub(super) kind: usize,
}

/// The cache key dictionaries, read once per query: every side whose blob a representation
/// names, and every metric of a current version that passes the filter. A cell's (metric,
/// params, prep) key is numbered by its (name, x kind, y kind) indices ([`Dictionary::key`]).
pub(super) struct Dictionary<'i> {
    pub(super) sides: HashMap<i64, Side<'i>>,
    /// (metric id, index into `names`, symmetric).
    pub(super) metrics: Vec<(i64, usize, bool)>,
    pub(super) names: Vec<(String, String)>,
    pub(super) kinds: Vec<String>,
}

/// The index of `v` in `list`, appending it when it is new.
pub(super) fn intern<T: PartialEq>(list: &mut Vec<T>, v: T) -> usize {
    list.iter().position(|x| *x == v).unwrap_or_else(|| {
        list.push(v);
        list.len() - 1
    })
}

impl<'i> Dictionary<'i> {
    fn read(catalog: &dyn Catalog, idx: &'i RepIndex, filter: &CellFilter) -> Result<Self> {
        let current: HashMap<&str, (u32, bool)> = crate::metrics::ALL
            .iter()
            .map(|m| (m.name(), (m.version(), m.symmetric())))
            .collect();
        let mut names: Vec<(String, String)> = Vec::new();
        let mut metrics = Vec::new();
        for e in catalog.cell_metrics()? {
            let (id, m, v, p) = (e.id, e.metric, e.version, e.params);
            // Rows of an older metric version, or of an unknown metric, are never served.
            let Some(&(version, symmetric)) = current.get(m.as_str()) else {
                continue;
            };
            let wanted = filter.metric.as_ref().is_none_or(|f| *f == m)
                && filter.params.as_ref().is_none_or(|f| *f == p);
            if version as i64 != v || !wanted {
                continue;
            }
            metrics.push((id, intern(&mut names, (m, p)), symmetric));
        }
        let mut kinds: Vec<String> = Vec::new();
        let mut sides = HashMap::new();
        for e in catalog.cell_sides()? {
            let (id, hash, prep) = (e.id, e.hash, e.prep);
            let Some(reps) = idx.by_hash.get(hash.as_bytes()) else {
                continue;
            };
            let kind = intern(&mut kinds, prep::kind_of_key(&prep, filter.scope));
            sides.insert(
                id,
                Side {
                    hash,
                    reps,
                    clamp: prep::clamp_of_key(&prep),
                    kind,
                },
            );
        }
        Ok(Dictionary {
            sides,
            metrics,
            names,
            kinds,
        })
    }

    /// How many keys [`Dictionary::key`] can number.
    fn key_count(&self) -> usize {
        self.names.len() * self.kinds.len() * self.kinds.len()
    }

    /// The number of the key of metric name `n` with prep kinds `a` (x) and `b` (y).
    fn key(&self, n: usize, a: usize, b: usize) -> u32 {
        let k = self.kinds.len();
        ((n * k + a) * k + b) as u32
    }

    /// The (metric, params, prep) of key number `key`: one prep kind, or `x|y` when the
    /// sides differ.
    fn key_name(&self, key: u32) -> (String, String, String) {
        let k = self.kinds.len();
        let (n, a, b) = (
            key as usize / (k * k),
            key as usize / k % k,
            key as usize % k,
        );
        let (m, p) = self.names[n].clone();
        let prep = if a == b {
            self.kinds[a].clone()
        } else {
            format!("{}|{}", self.kinds[a], self.kinds[b])
        };
        (m, p, prep)
    }
}

/// Scans the cells whose x side id lies in [lo, hi] (the primary key is (m, x, y), so each
/// metric's range is a contiguous stretch of the table).
pub(super) fn scan(
    reader: &mut dyn CellReader,
    idx: &RepIndex,
    dict: &Dictionary,
    scope: ClampScope,
    lo: i64,
    hi: i64,
) -> Result<Part> {
    let mut part = Part::default();
    for &(m, name, symmetric) in &dict.metrics {
        reader.scan(m, lo, hi, &mut |x, y, v| {
            let (Some(sx), Some(sy)) = (dict.sides.get(&x), dict.sides.get(&y)) else {
                return; // a blob no representation names
            };
            let k = dict.key(name, sx.kind, sy.kind);
            let mut emit = |a: u32, b: u32| {
                part.xs.push(a);
                part.ys.push(b);
                part.xset.push(idx.set_of[a as usize]);
                part.yset.push(idx.set_of[b as usize]);
                part.xl.push(idx.layer_of[a as usize]);
                part.yl.push(idx.layer_of[b as usize]);
                part.key.push(k);
                part.value.push(v);
            };
            // A cell belongs to a layer set only when it was computed at that set's clamp
            // scope with that set's threshold.
            for &(a, da) in sx.reps {
                if !idx.owns(a, sx.clamp, scope) {
                    continue;
                }
                for &(b, db) in sy.reps {
                    if da != db || !idx.owns(b, sy.clamp, scope) {
                        continue;
                    }
                    emit(a, b);
                    if symmetric && sx.hash != sy.hash {
                        emit(b, a);
                    }
                }
            }
        })?;
    }
    Ok(part)
}

/// Reads the cache into [`Cells`]: the key dictionaries first, then the cells split into
/// ranges of x side ids (one per core), each scanned on its own read connection, then merged.
pub fn cells(reg: &Registry, idx: &RepIndex, filter: &CellFilter) -> Result<Cells> {
    let dict = Dictionary::read(reg.catalog.as_ref(), idx, filter)?;
    let threads = rayon::current_num_threads().clamp(1, 16) as i128;
    // Side ids are uniform over i64: equal ranges hold about equal shares of the cells.
    let span = (i64::MAX as i128 - i64::MIN as i128 + 1) / threads;
    let bounds: Vec<(i64, i64)> = (0..threads)
        .map(|t| {
            let lo = i64::MIN as i128 + t * span;
            let hi = if t == threads - 1 {
                i64::MAX as i128
            } else {
                lo + span - 1
            };
            (lo as i64, hi as i64)
        })
        .collect();
    let readers = reg.catalog.cell_readers(bounds.len())?;
    let parts: Vec<Result<Part>> = std::thread::scope(|sc| {
        let handles: Vec<_> = bounds
            .iter()
            .zip(readers)
            .map(|(&(lo, hi), mut reader)| {
                let dict = &dict;
                sc.spawn(move || scan(reader.as_mut(), idx, dict, filter.scope, lo, hi))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("cell scan panicked".into())))
            })
            .collect()
    });
    let mut all = Part::default();
    for part in parts {
        let part = part?;
        all.xs.extend(part.xs);
        all.ys.extend(part.ys);
        all.xset.extend(part.xset);
        all.yset.extend(part.yset);
        all.xl.extend(part.xl);
        all.yl.extend(part.yl);
        all.key.extend(part.key);
        all.value.extend(part.value);
    }
    // Number the keys that occur, in order of first occurrence.
    let mut renumber: Vec<Option<u32>> = vec![None; dict.key_count()];
    let mut names = Vec::new();
    for k in all.key.iter_mut() {
        *k = *renumber[*k as usize].get_or_insert_with(|| {
            names.push(dict.key_name(*k));
            names.len() as u32 - 1
        });
    }
    let frame = DataFrame::new_infer_height(vec![
        column("x_rep", all.xs),
        column("y_rep", all.ys),
        column("x_set", all.xset),
        column("y_set", all.yset),
        column("x_layer", all.xl),
        column("y_layer", all.yl),
        column("key", all.key),
        column("value", all.value),
    ])
    .map_err(pe)?;
    let keys = DataFrame::new_infer_height(vec![
        column("key", (0..names.len() as u32).collect::<Vec<_>>()),
        column(
            "metric",
            names.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
        ),
        column(
            "params",
            names.iter().map(|k| k.1.clone()).collect::<Vec<_>>(),
        ),
        column(
            "prep",
            names.iter().map(|k| k.2.clone()).collect::<Vec<_>>(),
        ),
    ])
    .map_err(pe)?;
    Ok(Cells { frame, keys })
}
