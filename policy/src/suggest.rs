//! "Did you mean …?": the nearest valid names to a misspelt one, by edit distance.

/// The candidates nearest to `input` (case-insensitive Levenshtein distance), best first, at most
/// `limit` of them, and only those close enough to be a plausible typo.
pub fn nearest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<&'a str> {
    let needle = input.to_lowercase();
    // A typo changes a few characters; allow roughly one edit per four characters, at least two.
    let max_distance = (needle.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, &'a str)> = candidates
        .into_iter()
        .filter_map(|candidate| {
            let distance = strsim::levenshtein(&needle, &candidate.to_lowercase());
            (distance <= max_distance).then_some((distance, candidate))
        })
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(limit).map(|(_, c)| c).collect()
}

/// Renders suggestions as `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `" (did you mean "x"?)"`, or nothing when there is no suggestion.
pub fn did_you_mean(items: &[&str]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", quoted_list(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_close_names_only() {
        let keys = ["schedule", "duration", "timezone", "blackout"];
        assert_eq!(nearest("timzone", keys, 3), vec!["timezone"]);
        assert_eq!(nearest("Schedul", keys, 3), vec!["schedule"]);
        assert!(nearest("colour", keys, 3).is_empty());
    }

    #[test]
    fn renders_lists() {
        assert_eq!(quoted_list(&["a"]), "\"a\"");
        assert_eq!(quoted_list(&["a", "b"]), "\"a\" or \"b\"");
        assert_eq!(quoted_list(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
        assert_eq!(did_you_mean(&[]), "");
        assert_eq!(did_you_mean(&["x"]), " (did you mean \"x\"?)");
    }
}
