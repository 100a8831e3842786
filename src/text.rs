//! Checks on text people write, applied before any parser sees it.
//!
//! Parsers of nested syntax (YAML flow collections, Cedar expressions)
//! recurse once per level, so a small file of brackets can exhaust the
//! stack or take quadratic time. [`max_nesting`] finds the depth cheaply so
//! that callers refuse such input with a clear error first. Text shown to
//! reviewers must not carry terminal control sequences that could hide
//! words from them; [`control_char`] finds the first one, and
//! [`escape_controls`] makes text safe to quote in an error.

/// Deepest bracket nesting accepted in a workflow or policy file.
pub const MAX_NESTING: usize = 32;

/// The deepest nesting of `(`, `[` and `{` in `text`, ignoring brackets
/// inside double-quoted strings (with `\` escapes).
pub fn max_nesting(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The first control character other than newline and tab, if any.
pub fn control_char(text: &str) -> Option<char> {
    text.chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
}

/// `text` with every control character escaped as Rust would write it
/// (`\u{1b}`, `\n`), for messages that quote bytes nobody checked.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_outside_strings() {
        assert_eq!(max_nesting("a: [1, [2, {b: 3}]]"), 3);
        assert_eq!(max_nesting(r#"when { "(((" == "\")" }"#), 1);
        assert_eq!(max_nesting(&"(".repeat(1000)), 1000);
        assert_eq!(max_nesting("plain"), 0);
    }

    #[test]
    fn control_characters_are_found_but_newlines_pass() {
        assert_eq!(control_char("line one\nline\ttwo"), None);
        assert_eq!(control_char("hidden \u{1b}[8m text"), Some('\u{1b}'));
        assert_eq!(control_char("bell\u{7}"), Some('\u{7}'));
    }

    #[test]
    fn escaping_leaves_no_control_character_and_keeps_the_rest() {
        assert_eq!(escape_controls("a\u{1b}[2Jb\nc é"), "a\\u{1b}[2Jb\\nc é");
        assert_eq!(control_char(&escape_controls("\u{0}\u{7f}\u{9b}")), None);
    }
}
