//! Sample identity: row i of every feature file of a dataset is the dataset's sample i. A
//! dataset registered with its sample ids (`prh dataset add NAME --ids FILE`) can check that:
//! a feature file ingested or an array logged with the ids of its rows (or their digest) is
//! refused when they are not the dataset's samples in the dataset's order — a scrambled
//! export is the failure users report most, and it gives plausible, wrong numbers.

use crate::error::{Error, Result};

/// The sample ids a feature file's rows are, as given with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleIds {
    /// The ids, in row order.
    Ids(Vec<String>),
    /// Their digest ([`digest`]), 64 hex digits.
    Digest(String),
}

/// The digest of ordered sample ids: BLAKE3 of each id followed by a newline, in order, as
/// 64 hex digits — `b3sum ids.txt` of a file with one id per line (and a final newline).
pub fn digest(ids: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// Ids from text with one id per line (surrounding blanks and empty lines ignored).
pub fn parse_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

impl SampleIds {
    /// A digest as given: 64 hex digits, any case.
    pub fn digest_of(hex: &str) -> Result<SampleIds> {
        let h = hex.trim().to_ascii_lowercase();
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "a sample-id digest is 64 hex digits (b3sum of the ids, one per line), got {hex:?}"
            )));
        }
        Ok(SampleIds::Digest(h))
    }

    /// Checks that these are the `stored` ids of dataset `dataset`, in order; `what` names the
    /// features (a file, an array).
    pub fn check(&self, what: &str, dataset: &str, stored: &[String]) -> Result<()> {
        let hint = format!(
            "write the features in dataset {dataset}'s order (its ids: `prh dataset ids {dataset}`), or ingest them under another dataset"
        );
        if stored.is_empty() {
            return Err(Error::Conflict(format!(
                "{what}: dataset {dataset} records no sample ids, so the rows cannot be checked against it"
            ))
            .hint(format!(
                "register the ids with the dataset when it is made: `prh dataset add {dataset} --ids FILE`"
            )));
        }
        match self {
            SampleIds::Digest(d) => {
                let want = digest(stored);
                if *d != want {
                    return Err(Error::Conflict(format!(
                        "{what}: the rows are not dataset {dataset}'s samples in its order: their ids digest to {d}, the dataset's to {want}"
                    ))
                    .hint(hint));
                }
            }
            SampleIds::Ids(ids) => {
                if ids.len() != stored.len() {
                    return Err(Error::Invalid(format!(
                        "{what}: {} sample ids given, but dataset {dataset} has {} samples",
                        ids.len(),
                        stored.len()
                    )));
                }
                let Some(row) = ids.iter().zip(stored).position(|(a, b)| a != b) else {
                    return Ok(());
                };
                let mut a: Vec<&String> = ids.iter().collect();
                let mut b: Vec<&String> = stored.iter().collect();
                a.sort_unstable();
                b.sort_unstable();
                let out_of_place = ids.iter().zip(stored).filter(|(a, b)| a != b).count();
                let what_kind = if a == b {
                    format!(
                        "the same {} samples in another order ({out_of_place} rows out of place: a scrambled export?)",
                        ids.len()
                    )
                } else {
                    let missing = ids.iter().filter(|i| b.binary_search(i).is_err()).count();
                    format!("{missing} of its ids are not samples of the dataset")
                };
                return Err(Error::Conflict(format!(
                    "{what}: row {row} is sample {:?}, but sample {row} of dataset {dataset} is {:?}: {what_kind}",
                    ids[row], stored[row]
                ))
                .hint(hint));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_digest_is_b3sum_of_one_id_per_line() {
        // `printf 'a\nb\n' | b3sum`
        assert_eq!(
            digest(&ids(&["a", "b"])),
            blake3::hash(b"a\nb\n").to_hex().to_string()
        );
        assert_ne!(digest(&ids(&["a", "b"])), digest(&ids(&["b", "a"])));
        assert_eq!(parse_lines(" a \n\nb\n"), ids(&["a", "b"]));
    }

    #[test]
    fn rows_that_are_not_the_datasets_samples_in_order_are_named() {
        let stored = ids(&["s0", "s1", "s2", "s3"]);
        let ok = SampleIds::Ids(stored.clone());
        assert!(ok.check("f.npy", "d", &stored).is_ok());
        assert!(
            SampleIds::Digest(digest(&stored))
                .check("f.npy", "d", &stored)
                .is_ok()
        );
        let e = SampleIds::Ids(ids(&["s0", "s2", "s1", "s3"]))
            .check("f.npy", "d", &stored)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1 is sample \"s2\""), "{e}");
        assert!(
            e.contains("the same 4 samples in another order (2 rows out of place"),
            "{e}"
        );
        let e = SampleIds::Ids(ids(&["s0", "s1", "x", "y"]))
            .check("f.npy", "d", &stored)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 of its ids are not samples"), "{e}");
        let e = SampleIds::Digest(digest(&ids(&["s1", "s0", "s2", "s3"])))
            .check("f.npy", "d", &stored)
            .unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Conflict);
        assert!(SampleIds::digest_of("abc").is_err());
        let e = ok.check("f.npy", "d", &[]).unwrap_err().to_string();
        assert!(e.contains("records no sample ids"), "{e}");
    }
}
