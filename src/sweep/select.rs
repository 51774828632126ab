//! Which checkpoints a sweep takes: selectors to models, models to checkpoints and their
//! layers, the shared dataset.

use super::*;

/// Resolves a selector to model names (sorted), erroring on unknown names.
pub fn select_models(reg: &Registry, sel: &Selector) -> Result<Vec<String>> {
    use crate::names::nfc;
    let models = reg.catalog.models()?;
    let out: Vec<String> = match sel {
        Selector::All => models.iter().map(|m| m.name.clone()).collect(),
        Selector::Modality(m) => {
            let m = nfc(m);
            models
                .iter()
                .filter(|x| x.modality == m)
                .map(|x| x.name.clone())
                .collect()
        }
        Selector::Family(f) => {
            let f = nfc(f);
            models
                .iter()
                .filter(|x| x.family.as_deref() == Some(f.as_str()))
                .map(|x| x.name.clone())
                .collect()
        }
        Selector::Names(names) => {
            let names: Vec<String> = names.iter().map(|n| nfc(n)).collect();
            for n in &names {
                if !models.iter().any(|m| &m.name == n) {
                    return Err(Error::NotFound(format!(
                        "no model named {n} in the registry"
                    )));
                }
            }
            names
        }
    };
    if out.is_empty() {
        return Err(Error::NotFound(format!(
            "selector {sel:?} matches no model"
        )));
    }
    Ok(out)
}

/// The checkpoints (latest, or all) of the given models with their layers on `dataset`/`pool`.
pub fn resolve_checkpoints(
    reg: &Registry,
    models: &[String],
    dataset: &str,
    pool: Option<&str>,
    all_checkpoints: bool,
    checkpoint: Option<&str>,
) -> Result<Vec<CheckpointLayers>> {
    let mut out = Vec::new();
    for m in models {
        let cks = if let Some(c) = checkpoint {
            vec![
                reg.catalog
                    .checkpoint(m, c)?
                    .ok_or_else(|| Error::NotFound(format!("model {m} has no checkpoint {c}")))?,
            ]
        } else if all_checkpoints {
            reg.catalog.checkpoints(Some(m))?
        } else {
            reg.catalog.latest_checkpoint(m)?.into_iter().collect()
        };
        for ck in cks {
            let reps = reg.catalog.reps(&RepFilter {
                model: Some(m.clone()),
                checkpoint_id: Some(ck.id),
                dataset: Some(dataset.to_string()),
                pool: pool.map(String::from),
                ..Default::default()
            })?;
            if reps.is_empty() {
                if all_checkpoints {
                    continue;
                }
                return Err(Error::NotFound(format!(
                    "model {m} checkpoint {} has no features on dataset {dataset}{}",
                    ck.checkpoint,
                    pool.map(|p| format!(" with pool {p}")).unwrap_or_default()
                )));
            }
            let pools: HashSet<&str> = reps.iter().map(|r| r.pool.as_str()).collect();
            if pools.len() > 1 {
                let mut p: Vec<&str> = pools.into_iter().collect();
                p.sort();
                return Err(Error::Invalid(format!(
                    "model {m} checkpoint {} has several poolings ({}); choose one with --pool",
                    ck.checkpoint,
                    p.join(", ")
                )));
            }
            out.push(CheckpointLayers {
                checkpoint_id: ck.id,
                model: m.clone(),
                checkpoint: ck.checkpoint.clone(),
                layers: reps
                    .iter()
                    .map(|r| Ok(r.hash))
                    .collect::<Result<Vec<_>>>()?,
                layer_ids: reps.iter().map(|r| r.layer).collect(),
                n: reps[0].n,
                f32_bytes: reps.iter().map(|r| r.n * r.d * 4).sum(),
                layout: set_layout(reps.iter().map(|r| r.layout.as_deref())),
            });
        }
    }
    Ok(out)
}

/// The dataset to sweep: the one given, or the only one the selected models share.
pub fn choose_dataset(reg: &Registry, models: &[String], given: Option<&str>) -> Result<String> {
    if let Some(d) = given {
        let d = crate::names::nfc(d);
        if reg.catalog.dataset(&d)?.is_none() {
            return Err(Error::NotFound(format!("no dataset named {d}")));
        }
        return Ok(d);
    }
    let mut common: Option<HashSet<String>> = None;
    for m in models {
        let ds: HashSet<String> = reg
            .catalog
            .reps(&RepFilter {
                model: Some(m.clone()),
                ..Default::default()
            })?
            .into_iter()
            .map(|r| r.dataset)
            .collect();
        common = Some(match common {
            None => ds,
            Some(c) => c.intersection(&ds).cloned().collect(),
        });
    }
    let mut c: Vec<String> = common.unwrap_or_default().into_iter().collect();
    c.sort();
    match c.len() {
        1 => Ok(c.remove(0)),
        0 => Err(Error::Conflict(
            "the selected models share no dataset; ingest their features on one dataset".into(),
        )),
        _ => Err(Error::Invalid(format!(
            "the selected models share several datasets ({}); choose one with --dataset",
            c.join(", ")
        ))),
    }
}
