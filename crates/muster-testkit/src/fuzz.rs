//! Input for the property tests that stand in for fuzzing: valid examples mutated.

use proptest::prelude::*;

/// `valid` with up to six random characters replaced, inserted, or the text cut at a random place.
pub fn mutated(valid: impl Into<String>) -> impl Strategy<Value = String> {
    let valid: Vec<char> = valid.into().chars().collect();
    prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 0..6).prop_map(
        move |edits| {
            let mut chars = valid.clone();
            for (at, c, op) in edits {
                if chars.is_empty() {
                    break;
                }
                let i = at.index(chars.len());
                match op {
                    0 => chars[i] = c,
                    1 => chars.insert(i, c),
                    _ => chars.truncate(i),
                }
            }
            chars.into_iter().collect()
        },
    )
}
