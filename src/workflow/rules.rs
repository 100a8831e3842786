//! The value rules: turns a [`RawWorkflow`] into validated [`Step`]s.
//!
//! Each rule is a small function returning the message for one field; the
//! walk over the document calls them in file order, so the first problem
//! reported is the first one a reader meets.

use std::collections::{HashMap, HashSet};

use super::raw::{RawDuration, RawStep, RawWorkflow};
use super::{
    Step, WorkflowError, DEFAULT_DEADLINE_SECS, DEFAULT_STEPUP_BUDGET, FORMAT_VERSION,
    MAX_DEADLINE_SECS, MAX_INTENT_BYTES, MAX_RESOURCE_BYTES, MAX_STEPS, MAX_STEPUP_BUDGET,
    MAX_TTL_SECS, MIN_DEADLINE_SECS, MIN_TTL_SECS,
};
use crate::scope::{ScopeError, ScopeSet};
use crate::spiffe::SpiffeId;

/// The top-level values after validation.
#[derive(Debug)]
pub(super) struct Checked {
    pub name: String,
    pub description: Option<String>,
    pub deadline_secs: u64,
    pub stepup_budget: u32,
    pub steps: Vec<Step>,
}

/// Validates every value of `raw`, stopping at the first problem.
pub(super) fn check(file: &str, raw: RawWorkflow) -> Result<Checked, WorkflowError> {
    if raw.version != FORMAT_VERSION {
        return Err(bad_version(file, raw.version));
    }
    let top = |field, message| field_error(file, None, field, message);
    check_id(&raw.name).map_err(|m| top("name", m))?;
    let deadline_secs = match &raw.deadline {
        Some(d) => duration_secs(d, MIN_DEADLINE_SECS, MAX_DEADLINE_SECS)
            .map_err(|m| top("deadline", m))?,
        None => DEFAULT_DEADLINE_SECS,
    };
    let stepup_budget = match raw.stepup_budget {
        Some(n) => budget(n).map_err(|m| top("stepup_budget", m))?,
        None => DEFAULT_STEPUP_BUDGET,
    };
    step_count(raw.steps.len()).map_err(|m| top("steps", m))?;

    let steps = check_steps(file, raw.steps)?;
    Ok(Checked {
        name: raw.name,
        description: raw.description,
        deadline_secs,
        stepup_budget,
        steps,
    })
}

/// The error for a `version` other than [`FORMAT_VERSION`].
pub(super) fn bad_version(file: &str, version: u64) -> WorkflowError {
    let message = format!("`{version}` is not supported; must be {FORMAT_VERSION}");
    field_error(file, None, "version", message)
}

fn field_error(
    file: &str,
    step: Option<&str>,
    field: &'static str,
    message: String,
) -> WorkflowError {
    WorkflowError::Field {
        file: file.to_string(),
        step: step.map(str::to_string),
        field,
        message,
    }
}

/// Validates the steps in file order.
fn check_steps(file: &str, raw: Vec<RawStep>) -> Result<Vec<Step>, WorkflowError> {
    // Dependencies may name later steps, so every id written is known up
    // front; a step whose own id is bad is reported when the walk gets there.
    let written: HashSet<String> = raw.iter().map(|s| s.id.clone()).collect();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut steps = Vec::with_capacity(raw.len());

    for (i, step) in raw.into_iter().enumerate() {
        let position = i + 1;
        check_id(&step.id)
            .map_err(|m| field_error(file, Some(&format!("#{position}")), "id", m))?;
        if let Some(&first) = first_seen.get(&step.id) {
            return Err(WorkflowError::DuplicateId {
                file: file.to_string(),
                step: step.id,
                first,
                second: position,
            });
        }
        first_seen.insert(step.id.clone(), position);

        steps.push(check_step(file, step, &written)?);
    }
    Ok(steps)
}

/// Validates one step whose id is already known to be good and unique.
fn check_step(file: &str, raw: RawStep, written: &HashSet<String>) -> Result<Step, WorkflowError> {
    let id = raw.id.as_str();
    let bad = |field, message| field_error(file, Some(id), field, message);

    let agent = SpiffeId::parse(&raw.agent).map_err(|e| bad("agent", e.to_string()))?;
    check_action(&raw.action).map_err(|m| bad("action", m))?;
    check_resource(&raw.resource).map_err(|m| bad("resource", m))?;
    let scopes = scope_set(&raw.scopes).map_err(|m| bad("scopes", m))?;
    let intent = check_intent(&raw.intent).map_err(|m| bad("intent", m))?;
    let ttl_secs =
        duration_secs(&raw.ttl, MIN_TTL_SECS, MAX_TTL_SECS).map_err(|m| bad("ttl", m))?;
    check_dependencies(file, id, &raw.depends_on, written)?;

    Ok(Step {
        id: raw.id.clone(),
        agent,
        action: raw.action,
        resource: raw.resource,
        scopes,
        intent,
        risk: raw.risk,
        ttl_secs,
        depends_on: raw.depends_on,
    })
}

/// Each entry must name another step, once.
fn check_dependencies(
    file: &str,
    id: &str,
    depends_on: &[String],
    written: &HashSet<String>,
) -> Result<(), WorkflowError> {
    let mut seen = HashSet::new();
    for dependency in depends_on {
        if dependency == id {
            return Err(WorkflowError::SelfLoop {
                file: file.to_string(),
                step: id.to_string(),
            });
        }
        if !seen.insert(dependency.as_str()) {
            let message = format!("`{dependency}` is listed twice");
            return Err(field_error(file, Some(id), "depends_on", message));
        }
        if !written.contains(dependency) {
            return Err(WorkflowError::UnknownDependency {
                file: file.to_string(),
                step: id.to_string(),
                dependency: dependency.clone(),
            });
        }
    }
    Ok(())
}

/// True for a valid step id: `[a-z0-9][a-z0-9_-]{0,63}`.
pub(super) fn is_step_id(s: &str) -> bool {
    matches_name(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `[first][a-z0-9_-]{0,63}`: the shape of names, ids and actions.
fn matches_name(s: &str, first: impl Fn(char) -> bool) -> bool {
    let rest = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-');
    let mut chars = s.chars();
    let starts_well = chars.next().is_some_and(first);
    starts_well && s.len() <= 64 && chars.all(rest)
}

/// Workflow names and step ids share one pattern.
fn check_id(id: &str) -> Result<(), String> {
    match is_step_id(id) {
        true => Ok(()),
        false => Err(no_match(id, "[a-z0-9][a-z0-9_-]{0,63}")),
    }
}

/// `[a-z][a-z0-9_.-]{0,63}`.
fn check_action(action: &str) -> Result<(), String> {
    let rest =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-');
    let mut chars = action.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && action.len() <= 64
        && chars.all(rest);
    match ok {
        true => Ok(()),
        false => Err(no_match(action, "[a-z][a-z0-9_.-]{0,63}")),
    }
}

/// The message for a value that does not match its pattern.
fn no_match(value: &str, pattern: &str) -> String {
    if value.is_empty() {
        return "must not be empty".to_string();
    }
    format!("`{}` does not match `{pattern}`", shorten(value))
}

/// At most 80 characters of `value`, so a message stays one short line.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

/// One token audience: 1..=[`MAX_RESOURCE_BYTES`] bytes, no whitespace.
fn check_resource(resource: &str) -> Result<(), String> {
    if resource.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    if resource.len() > MAX_RESOURCE_BYTES {
        return Err(too_long(resource.len(), MAX_RESOURCE_BYTES));
    }
    match resource.chars().any(char::is_whitespace) {
        true => Err(format!(
            "`{}` contains whitespace; a resource is one value",
            shorten(resource)
        )),
        false => Ok(()),
    }
}

fn too_long(len: usize, limit: usize) -> String {
    format!("is {len} bytes; at most {limit} are allowed")
}

/// A non-empty list of valid scopes, each named once.
fn scope_set(scopes: &[String]) -> Result<ScopeSet, String> {
    if scopes.is_empty() {
        return Err("must not be empty".to_string());
    }
    let set = ScopeSet::parse(scopes).map_err(|e: ScopeError| e.to_string())?;

    let mut seen = HashSet::new();
    match scopes.iter().find(|s| !seen.insert(s.as_str())) {
        Some(twice) => Err(format!("scope `{twice}` is listed twice")),
        None => Ok(set),
    }
}

/// The intent, trimmed: 1..=[`MAX_INTENT_BYTES`] bytes.
fn check_intent(intent: &str) -> Result<String, String> {
    let trimmed = intent.trim();
    if trimmed.is_empty() {
        return Err("must not be empty".to_string());
    }
    if trimmed.len() > MAX_INTENT_BYTES {
        return Err(too_long(trimmed.len(), MAX_INTENT_BYTES));
    }
    // Reviewers read this on terminals: an escape sequence could hide words.
    if let Some(c) = crate::text::control_char(trimmed) {
        return Err(format!(
            "contains the control character U+{:04X}; intents are shown to reviewers as written",
            u32::from(c)
        ));
    }
    Ok(trimmed.to_string())
}

fn budget(n: u64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(b) if b <= MAX_STEPUP_BUDGET => Ok(b),
        _ => Err(format!(
            "`{n}` is too large; must be between 0 and {MAX_STEPUP_BUDGET}"
        )),
    }
}

fn step_count(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err("must hold at least one step".to_string());
    }
    match count > MAX_STEPS {
        true => Err(format!(
            "holds {count} steps; at most {MAX_STEPS} are allowed"
        )),
        false => Ok(()),
    }
}

/// Seconds in `raw`, which must lie within `min..=max`.
pub(super) fn duration_secs(raw: &RawDuration, min: u64, max: u64) -> Result<u64, String> {
    let bounds = format!("must be between {} and {}", human(min), human(max));
    let (written, secs) = match raw {
        RawDuration::Secs(n) => (n.to_string(), Some(*n)),
        RawDuration::Text(text) => match parse_duration(text) {
            Parsed::Secs(n) => (text.clone(), Some(n)),
            Parsed::Overflow => (text.clone(), None),
            Parsed::Malformed => {
                let shown = shorten(text);
                return Err(format!(
                    "`{shown}` is not a duration like `90s`, `2m` or `1h`; {bounds}"
                ));
            }
        },
    };
    match secs {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("`{}` is out of range; {bounds}", shorten(&written))),
    }
}

/// What [`parse_duration`] made of a text.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Secs(u64),
    /// Well formed but too large for a `u64` of seconds.
    Overflow,
    Malformed,
}

/// `<digits>` then one of `s`, `m`, `h`.
fn parse_duration(text: &str) -> Parsed {
    let Some(unit) = text.chars().last() else {
        return Parsed::Malformed;
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return Parsed::Malformed,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Parsed::Malformed;
    }
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
    {
        Some(secs) => Parsed::Secs(secs),
        None => Parsed::Overflow,
    }
}

/// Seconds in the largest unit that divides them: `3600` is `1h`.
fn human(secs: u64) -> String {
    match secs {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_each_unit() {
        assert_eq!(parse_duration("10s"), Parsed::Secs(10));
        assert_eq!(parse_duration("2m"), Parsed::Secs(120));
        assert_eq!(parse_duration("1h"), Parsed::Secs(3600));
        assert_eq!(parse_duration("007s"), Parsed::Secs(7));
    }

    #[test]
    fn durations_refuse_other_shapes() {
        for text in [
            "", "s", "10", "10d", "1.5m", "-5s", " 5s", "5 s", "m5", "5ms", "٣s",
        ] {
            assert_eq!(parse_duration(text), Parsed::Malformed, "{text:?}");
        }
        assert_eq!(parse_duration("99999999999999999999s"), Parsed::Overflow);
        assert_eq!(parse_duration("18446744073709551615h"), Parsed::Overflow);
    }

    #[test]
    fn human_uses_the_largest_whole_unit() {
        assert_eq!(human(10), "10s");
        assert_eq!(human(90), "90s");
        assert_eq!(human(60), "1m");
        assert_eq!(human(3600), "1h");
        assert_eq!(human(86400), "24h");
    }

    #[test]
    fn overflowing_duration_is_out_of_range() {
        let raw = RawDuration::Text("99999999999999999999s".to_string());
        assert_eq!(
            duration_secs(&raw, MIN_TTL_SECS, MAX_TTL_SECS),
            Err("`99999999999999999999s` is out of range; must be between 10s and 1h".to_string())
        );
    }

    #[test]
    fn names_follow_the_pattern() {
        assert!(is_step_id("a"));
        assert!(is_step_id("0-deploy_eu"));
        assert!(is_step_id(&"a".repeat(64)));
        assert!(!is_step_id(&"a".repeat(65)));
        assert!(!is_step_id(""));
        assert!(!is_step_id("-a"));
        assert!(!is_step_id("_a"));
        assert!(!is_step_id("Deploy"));
        assert!(!is_step_id("a.b"));
        assert!(!is_step_id("#1"));
        assert_eq!(check_action("tests.run"), Ok(()));
        assert_eq!(
            check_action("1run"),
            Err("`1run` does not match `[a-z][a-z0-9_.-]{0,63}`".to_string())
        );
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "X".repeat(100);
        assert_eq!(
            check_id(&long),
            Err(format!(
                "`{}…` does not match `[a-z0-9][a-z0-9_-]{{0,63}}`",
                "X".repeat(80)
            ))
        );
    }
}
