//! Strict validation of a policy set against the shipped schema plus one
//! action declaration per action, at a cost near-linear in the number of
//! actions.
//!
//! Cedar's validator typechecks every policy once per request environment
//! of the schema, and the schema has one environment per declared action,
//! so checking the whole set against one schema costs policies × actions:
//! a file with one permit per action grows quadratically. A policy whose
//! scope names its actions (`action == ...`, `action in [...]`) types as
//! `false` in every other action's environment: Cedar stops at the scope
//! there and reports nothing that the policy's own environments do not
//! report too, since every action applies to the same principal, resource
//! and context types. Checking such a policy against a schema that
//! declares only the actions it names therefore finds exactly the same
//! errors. [`plan`] splits a set into these checks:
//!
//! - policies with an unconstrained `action` against every declared action;
//! - scoped policies in chunks of [`CHUNK`], each chunk against a schema
//!   declaring the actions its policies name anywhere (scope and
//!   conditions), limited to the declared ones so that an undeclared
//!   action is still refused.
//!
//! The parent module [`crate::policy`] decides which actions are declared.

use std::collections::BTreeSet;

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, Schema, ValidationMode, Validator,
};

use super::{one_line, PolicyError, BASE_SCHEMA, NAMESPACE};

/// Scoped policies checked against one schema. Each chunk pays once for
/// parsing the base schema and typechecks its policies under the chunk's
/// actions only, so the total stays linear. For policies that name one
/// action each, 16 to 24 cost least (instructions counted for 1,000
/// actions: 8 took 12% more, 48 took 6% more, 96 took 27% more).
pub(super) const CHUNK: usize = 16;

/// One call of Cedar's validator: these policies against a schema that
/// declares these actions.
#[derive(Debug)]
pub(super) struct Check<'a> {
    /// The policies checked together.
    pub policies: Vec<&'a Policy>,
    /// The actions the schema declares for them.
    pub actions: BTreeSet<String>,
}

#[cfg(test)]
impl Check<'_> {
    /// Request environments Cedar typechecks for this check: one per
    /// policy and declared action.
    pub fn typechecks(&self) -> usize {
        self.policies.len() * self.actions.len()
    }
}

/// Splits `set` into the checks that validate it with `declared` actions.
pub(super) fn plan<'a>(set: &'a PolicySet, declared: &BTreeSet<String>) -> Vec<Check<'a>> {
    let (open, scoped): (Vec<&Policy>, Vec<&Policy>) = set
        .policies()
        .partition(|p| matches!(p.action_constraint(), ActionConstraint::Any));

    let mut checks = vec![];
    if !open.is_empty() {
        checks.push(Check {
            policies: open,
            actions: declared.clone(),
        });
    }
    for chunk in scoped.chunks(CHUNK) {
        checks.push(Check {
            policies: chunk.to_vec(),
            actions: chunk_actions(chunk, declared),
        });
    }
    checks
}

/// Validates `set` in strict mode against the base schema with `declared`
/// actions; returns one message per validation error.
pub(super) fn validate(
    set: &PolicySet,
    declared: &BTreeSet<String>,
) -> Result<Vec<String>, PolicyError> {
    let mut messages = vec![];
    for check in plan(set, declared) {
        messages.extend(run(&check)?);
    }
    Ok(messages)
}

/// The declared actions that the policies of `chunk` name anywhere.
fn chunk_actions(chunk: &[&Policy], declared: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for policy in chunk {
        match action_literals(policy) {
            Some(actions) => named.extend(actions),
            // Without the policy's literals, fall back to every declared
            // action: slower, never less strict.
            None => return declared.clone(),
        }
    }
    named.retain(|a| declared.contains(a));
    named
}

fn run(check: &Check<'_>) -> Result<Vec<String>, PolicyError> {
    let set = PolicySet::from_policies(check.policies.iter().map(|p| (*p).clone()))
        .map_err(|e| PolicyError::Schema(one_line(&e)))?;
    let schema = schema_with_actions(&check.actions)?;
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    Ok(result.validation_errors().map(|e| one_line(e)).collect())
}

/// Action ids named in the policies' action constraints.
pub(super) fn actions_named(set: &PolicySet) -> BTreeSet<String> {
    set.policies()
        .flat_map(scope_actions)
        .filter_map(|uid| stepgate_action(&uid))
        .collect()
}

fn action_type() -> String {
    format!("{NAMESPACE}::Action")
}

/// Every `Stepgate::Action` id the policy names, in its scope or its
/// conditions; `None` when the policy cannot be read back as JSON.
fn action_literals(policy: &Policy) -> Option<BTreeSet<String>> {
    let scope = scope_actions(policy);
    // Every action literal spells the type name `Action`. When the text
    // holds no more of them than the scope, the conditions name none, and
    // the JSON round trip (a second parse) is skipped.
    if policy.to_string().matches("Action").count() <= scope.len() {
        return Some(scope.iter().filter_map(stepgate_action).collect());
    }
    let json = policy.to_json().ok()?;
    let action_type = action_type();
    let mut found = BTreeSet::new();
    // An explicit stack: conditions can nest deeper than the call stack
    // should go.
    let mut stack = vec![&json];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                // Entity references read `{"type": "...", "id": "..."}`;
                // record literals wrap their values, so they never match.
                let kind = map.get("type").and_then(|t| t.as_str());
                let id = map.get("id").and_then(|i| i.as_str());
                if let (Some(kind), Some(id)) = (kind, id) {
                    if kind == action_type {
                        found.insert(id.to_string());
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Some(found)
}

/// The entity ids in the policy's action constraint, of any type.
fn scope_actions(policy: &Policy) -> Vec<EntityUid> {
    match policy.action_constraint() {
        ActionConstraint::Any => vec![],
        ActionConstraint::Eq(uid) => vec![uid],
        ActionConstraint::In(uids) => uids,
    }
}

/// The id of `uid` when it is a `Stepgate::Action`.
fn stepgate_action(uid: &EntityUid) -> Option<String> {
    (uid.type_name().to_string() == action_type()).then(|| uid.id().unescaped().to_string())
}

/// The base schema plus one declaration per action.
pub(super) fn schema_with_actions(actions: &BTreeSet<String>) -> Result<Schema, PolicyError> {
    // Declarations go inside the base schema's namespace block: Cedar
    // refuses a second block of the same namespace.
    let close = BASE_SCHEMA
        .rfind('}')
        .ok_or_else(|| PolicyError::Schema("base schema has no namespace block".into()))?;
    let mut text = BASE_SCHEMA[..close].to_string();
    for action in actions {
        let escaped = action.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!(
            "  action \"{escaped}\" appliesTo {{ principal: [Agent], resource: [Resource], context: StepContext }};\n"
        ));
    }
    text.push_str("}\n");
    Schema::from_cedarschema_str(&text)
        .map(|(schema, _)| schema)
        .map_err(|e| PolicyError::Schema(one_line(&e)))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::from_str(text).unwrap()
    }

    #[test]
    fn action_literals_come_from_the_scope_and_the_conditions_but_not_from_records() {
        let p = policy(
            r#"permit (principal, action in [Stepgate::Action::"a", Stepgate::Action::"b"], resource)
               when { action == Stepgate::Action::"c" && context has x && {type: "Stepgate::Action", id: "d"} == {type: "Stepgate::Action", id: "d"} };"#,
        );
        let want: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(action_literals(&p), Some(want));
    }

    #[test]
    fn a_policy_without_literals_in_its_conditions_yields_its_scope_actions() {
        let p = policy(
            r#"permit (principal, action in [Stepgate::Action::"a", Other::Action::"b"], resource) when { context.risk_level > 1 };"#,
        );
        let want: BTreeSet<String> = ["a"].map(String::from).into();
        assert_eq!(action_literals(&p), Some(want));
        // A comment that mentions actions only costs the JSON round trip.
        let commented = policy(
            "permit (principal, action == Stepgate::Action::\"a\", resource) // Action, Action\n;",
        );
        let want: BTreeSet<String> = ["a"].map(String::from).into();
        assert_eq!(action_literals(&commented), Some(want));
    }

    #[test]
    fn a_chunk_declares_only_the_declared_actions_its_policies_name() {
        let declared: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        let p = policy(
            r#"permit (principal, action == Stepgate::Action::"a", resource) when { action == Stepgate::Action::"zzz" };"#,
        );
        let want: BTreeSet<String> = ["a"].map(String::from).into();
        assert_eq!(chunk_actions(&[&p], &declared), want);
    }
}
