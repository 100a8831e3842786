//! The annotations stepgate reads on each policy: `@id` names it in every
//! decision, `@review` turns a permit into a step-up.
//!
//! Ids end up in events, logs and a reviewer's terminal, so they are
//! restricted to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 . _ : -` and
//! must be unique in the set. A refused value is quoted escaped: control
//! characters and terminal escapes are never echoed raw.

use std::collections::BTreeMap;
use std::fmt;

use cedar_policy::{Effect, Policy, PolicyId, PolicySet};

use super::PolicyError;

/// Longest `@id` accepted, in characters.
pub const MAX_ID_LEN: usize = 128;

/// Characters of a refused value quoted in an error; the rest is cut.
const QUOTE_LEN: usize = 64;

/// Where a policy sits in its file: 1-based position and, when its text
/// could be found, the line of its first annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// 1-based position among the file's policies.
    pub position: usize,
    /// 1-based line where the policy starts, if known.
    pub line: Option<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "policy {} (line {line})", self.position),
            None => write!(f, "policy {}", self.position),
        }
    }
}

/// Gives each policy the id of its `@id` annotation and collects the
/// `@review` groups of permits.
pub(super) fn rename_by_annotation(
    file: &str,
    text: &str,
    parsed: &PolicySet,
) -> Result<(PolicySet, BTreeMap<String, String>), PolicyError> {
    let mut lines = Lines::new(text);
    let mut set = PolicySet::new();
    let mut review = BTreeMap::new();
    let mut seen: BTreeMap<String, Place> = BTreeMap::new();
    for (index, policy) in in_file_order(parsed).into_iter().enumerate() {
        let at = Place {
            position: index + 1,
            line: lines.find(&policy.to_string()),
        };
        let id = policy_id(file, at, policy)?;
        if let Some(first) = seen.get(&id) {
            return Err(PolicyError::DuplicateId {
                file: file.to_string(),
                id,
                at,
                first: *first,
            });
        }
        if let Some(group) = policy.annotation("review") {
            check_review(file, &id, group, policy.effect())?;
            review.insert(id.clone(), group.to_string());
        }
        // Ids were checked unique above, so adding cannot clash.
        set.add(policy.new_id(PolicyId::new(&id)))
            .map_err(|e| PolicyError::Schema(super::one_line(&e)))?;
        seen.insert(id, at);
    }
    Ok((set, review))
}

/// The policies in file order: Cedar numbers them `policy0`, `policy1`...
fn in_file_order(parsed: &PolicySet) -> Vec<&Policy> {
    let mut policies: Vec<&Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| {
        p.id()
            .to_string()
            .strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    policies
}

/// The policy's `@id`, checked.
fn policy_id(file: &str, at: Place, policy: &Policy) -> Result<String, PolicyError> {
    let Some(id) = policy.annotation("id") else {
        return Err(PolicyError::MissingId {
            file: file.to_string(),
            at,
        });
    };
    if !valid_id(id) {
        return Err(PolicyError::BadId {
            file: file.to_string(),
            at,
            value: quote(id),
        });
    }
    Ok(id.to_string())
}

/// True when `id` is 1 to [`MAX_ID_LEN`] of `A-Z a-z 0-9 . _ : -`.
pub fn valid_id(id: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.chars().all(ok)
}

/// `value` as Rust would escape it (every control and non-ASCII character
/// as `\u{..}`), cut to [`QUOTE_LEN`] characters.
pub(super) fn quote(value: &str) -> String {
    let count = value.chars().count();
    let mut out: String = value
        .chars()
        .take(QUOTE_LEN)
        .flat_map(char::escape_default)
        .collect();
    if count > QUOTE_LEN {
        out.push_str(&format!("... ({count} characters)"));
    }
    out
}

fn check_review(file: &str, id: &str, group: &str, effect: Effect) -> Result<(), PolicyError> {
    let bad = |message: &str| PolicyError::BadReview {
        file: file.to_string(),
        id: id.to_string(),
        message: message.to_string(),
    };
    if effect == Effect::Forbid {
        return Err(bad("`@review` only applies to `permit` policies"));
    }
    if !crate::review::valid_group(group) {
        return Err(bad(
            "`@review` must name a reviewer group: 1-64 of a-z 0-9 - _",
        ));
    }
    Ok(())
}

/// Finds each policy's text in the file, in order, to tell its line. The
/// search and the line count only move forward, so a whole file costs one
/// pass.
struct Lines<'a> {
    text: &'a str,
    /// Byte offset where the search for the next policy starts.
    cursor: usize,
    /// The line at `cursor`, 1-based.
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            cursor: 0,
            line: 1,
        }
    }

    /// The line where `policy_text` next occurs; `None` when Cedar's copy
    /// of the text is not found verbatim.
    fn find(&mut self, policy_text: &str) -> Option<usize> {
        let rest = self.text.get(self.cursor..)?;
        let offset = rest.find(policy_text)?;
        let start = self.line + newlines(&rest[..offset]);
        self.cursor += offset + policy_text.len();
        self.line = start + newlines(policy_text);
        Some(start)
    }
}

fn newlines(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_allow_a_plain_charset_up_to_128_characters() {
        assert!(valid_id("production-rollout-needs-release-manager"));
        assert!(valid_id("team.ops:v2_rule-1"));
        assert!(valid_id(&"a".repeat(MAX_ID_LEN)));
        assert!(!valid_id(&"a".repeat(MAX_ID_LEN + 1)));
        assert!(!valid_id(""));
        assert!(!valid_id("two words"));
        assert!(!valid_id("ünïcode"));
        assert!(!valid_id("esc\u{1b}[8m"));
    }

    #[test]
    fn quoted_values_escape_control_characters_and_stop_at_64() {
        assert_eq!(quote("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
        assert_eq!(quote("é\"'"), "\\u{e9}\\\"\\'");
        let long = "x".repeat(100);
        assert_eq!(
            quote(&long),
            format!("{}... (100 characters)", "x".repeat(64))
        );
    }

    #[test]
    fn places_name_the_line_of_each_policy_in_order() {
        let text = "// a\n@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"b\") permit (principal, action, resource);\n";
        let parsed: PolicySet = text.parse().unwrap();
        let mut lines = Lines::new(text);
        let found: Vec<Option<usize>> = in_file_order(&parsed)
            .into_iter()
            .map(|p| lines.find(&p.to_string()))
            .collect();
        assert_eq!(found, vec![Some(2), Some(5)]);
    }
}
