//! The rules for names and provenance values a user gives (or a bundle carries): the one place
//! ingest, scores, datasets and bundle imports check them. A leaf module, below the catalog.

use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// A name as prh stores it and looks it up: Unicode NFC. "café" typed with a combining accent
/// (e + U+0301: macOS file names, some keyboards and input methods) and with the precomposed é
/// name one model, one dataset, one score. Every name a user gives passes through here on its
/// way in (ingest, datasets, scores, selectors, lookups by name).
pub fn nfc(s: &str) -> String {
    s.nfc().collect()
}

/// Longest name accepted (model, checkpoint, dataset, modality, family, pool, score), in
/// characters.
pub const MAX_NAME_CHARS: usize = 256;

/// Checks a name a user gave (or a bundle carries): 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters (newlines, ANSI escapes) and no invisible bidirectional or zero-width
/// marks, so that every listing prints it as it is.
pub fn validate_name(what: &str, s: &str) -> Result<()> {
    let bad = |why: &str| {
        let shown: String = s.chars().take(40).collect();
        Err(Error::Invalid(format!(
            "invalid {what} name {shown:?}{}: {why}",
            if s.chars().count() > 40 { "…" } else { "" }
        )))
    };
    if s.trim().is_empty() {
        return bad("it is empty");
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return bad(&format!("longer than {MAX_NAME_CHARS} characters"));
    }
    if s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    }) {
        return bad("control or invisible characters are not allowed");
    }
    if s != s.trim() {
        return bad("leading or trailing spaces");
    }
    Ok(())
}

/// Longest provenance value accepted, in characters.
pub const MAX_META_CHARS: usize = 4096;

/// A provenance value: at most [`MAX_META_CHARS`] characters, printable (no control
/// characters, so listings show it as it is).
pub fn validate_meta_value(key: &str, v: &str) -> Result<()> {
    if v.chars().count() > MAX_META_CHARS || v.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "invalid value for meta {key}: at most {MAX_META_CHARS} printable characters, no control characters"
        )));
    }
    Ok(())
}

/// Scores must have valid names and finite values.
pub fn validate_scores(scores: &[(String, f64)]) -> Result<()> {
    for (name, v) in scores {
        validate_name("score", name)?;
        if !v.is_finite() {
            return Err(Error::Invalid(format!(
                "score {name} = {v} is not a finite number"
            )));
        }
    }
    Ok(())
}
