//! Policy: Cedar decides every step-token request.
//!
//! A policy file is a Cedar policy set. Each request is one Cedar request
//! whose principal is the agent, action the step's action, resource the
//! step's resource (the token audience) and context the facts of the run
//! (see `schemas/stepgate.cedarschema`). Three outcomes come out:
//!
//! - **allow**: some `permit` matched, none of them asks for review;
//! - **step-up**: a matching `permit` carries `@review("<group>")`, so a
//!   person of that reviewer group must approve first;
//! - **deny**: a `forbid` matched, no `permit` matched, or evaluation hit
//!   an error. An error always ends in deny, whatever else matched.
//!
//! Every policy carries `@id("...")`, unique in the set and made of 1 to
//! [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 . _ : -`; decisions name the
//! ids that decided them and the digest of the policy set, so an auditor
//! can tell which rules were in force (`annotations` reads and checks
//! them). The set is validated in strict mode against the shipped schema
//! at load, in time near-linear in the number of actions (`schema` says
//! how). This module does no I/O beyond [`PolicySet::load`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Request, RestrictedExpression,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;

mod annotations;
mod reach;
mod schema;

pub use annotations::{valid_id, Place, MAX_ID_LEN};

/// The Cedar schema every policy set is validated against.
pub const BASE_SCHEMA: &str = include_str!("../schemas/stepgate.cedarschema");

/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_BYTES: u64 = 512 * 1024;

/// The Cedar namespace of stepgate's entity types and actions.
pub const NAMESPACE: &str = "Stepgate";

/// Why a policy set could not be loaded. Loading fails closed: no engine
/// starts with a policy set that did not load and validate cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The policy file.
        file: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("{file}: is {size} bytes; the limit is {MAX_POLICY_BYTES}")]
    TooLarge {
        /// The policy file.
        file: String,
        /// Its size.
        size: u64,
    },
    /// Cedar could not parse the policies.
    #[error("{file}: cedar syntax: {message}")]
    Syntax {
        /// The policy file.
        file: String,
        /// Cedar's description of the problem.
        message: String,
    },
    /// A policy lacks the `@id` annotation.
    #[error("{file}: {at} has no `@id(\"...\")` annotation")]
    MissingId {
        /// The policy file.
        file: String,
        /// Where the policy is.
        at: Place,
    },
    /// An `@id` value is not an id (see [`valid_id`]).
    #[error(
        "{file}: {at}: `@id(\"{value}\")` is not an id: use 1-{MAX_ID_LEN} of A-Z a-z 0-9 . _ : -"
    )]
    BadId {
        /// The policy file.
        file: String,
        /// Where the policy is.
        at: Place,
        /// The refused value, escaped and cut to 64 characters.
        value: String,
    },
    /// Two policies carry the same `@id`.
    #[error("{file}: {at}: `@id(\"{id}\")` is already the id of {first}")]
    DuplicateId {
        /// The policy file.
        file: String,
        /// The repeated id.
        id: String,
        /// Where the second policy is.
        at: Place,
        /// Where the first policy with that id is.
        first: Place,
    },
    /// A `@review` annotation is misplaced or malformed.
    #[error("{file}: policy `{id}`: {message}")]
    BadReview {
        /// The policy file.
        file: String,
        /// The policy id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// The file contains templates, which stepgate does not link.
    #[error("{file}: templates are not supported; write static policies")]
    Template {
        /// The policy file.
        file: String,
    },
    /// The schema (base plus action declarations) did not build.
    #[error("schema: {0}")]
    Schema(String),
    /// Strict validation against the schema failed.
    #[error("{file}: does not validate against the schema: {}", messages.join("; "))]
    Invalid {
        /// The policy file.
        file: String,
        /// One message per validation error.
        messages: Vec<String>,
    },
}

/// What a decision allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// Issue the token now.
    Allow,
    /// Issue the token once the named reviewer group approves.
    StepUp {
        /// The reviewer group named by the `@review` annotation.
        group: String,
    },
    /// Never issue the token.
    Deny,
}

impl Outcome {
    /// `allow`, `step-up` or `deny`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::StepUp { .. } => "step-up",
            Outcome::Deny => "deny",
        }
    }
}

/// A decision with its reasons, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What the decision allows.
    pub outcome: Outcome,
    /// Ids of the policies that decided (matching permits on allow and
    /// step-up, matching forbids on deny), sorted.
    pub policy_ids: Vec<String>,
    /// Evaluation errors; any error makes the outcome deny.
    pub errors: Vec<String>,
    /// Digest of the policy set in force.
    pub policy_digest: String,
    /// One line for people: why this outcome.
    pub reason: String,
}

/// The facts of one request, turned into Cedar's principal, action,
/// resource and context.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The agent asking.
    pub agent: &'a SpiffeId,
    /// The step's action.
    pub action: &'a str,
    /// The step's resource.
    pub resource: &'a str,
    /// Run id.
    pub run: &'a str,
    /// Step id.
    pub step: &'a str,
    /// Workflow name.
    pub workflow: &'a str,
    /// Workflow digest.
    pub workflow_digest: &'a str,
    /// Risk name (`low`..`critical`).
    pub risk: &'a str,
    /// Risk level 0..=3.
    pub risk_level: i64,
    /// Intent text.
    pub intent: &'a str,
    /// Scopes asked for.
    pub scopes: &'a ScopeSet,
    /// Step-ups the run made before this request.
    pub stepups_so_far: u32,
    /// Decision time, seconds since the Unix epoch.
    pub now: i64,
}

impl<'a> Facts<'a> {
    /// The facts of `step` of `workflow` in run `run`: the agent is the
    /// step's, the scopes those given, the time `now` in seconds.
    pub fn for_step(
        workflow: &'a crate::workflow::Workflow,
        step: &'a crate::workflow::Step,
        run: &'a str,
        agent: &'a SpiffeId,
        scopes: &'a ScopeSet,
        stepups_so_far: u32,
        now: i64,
    ) -> Self {
        Self {
            agent,
            action: &step.action,
            resource: &step.resource,
            run,
            step: &step.id,
            workflow: &workflow.name,
            workflow_digest: workflow.digest(),
            risk: step.risk.as_str(),
            risk_level: step.risk.level(),
            intent: &step.intent,
            scopes,
            stepups_so_far,
            now,
        }
    }
}

/// A loaded, validated Cedar policy set.
#[derive(Debug, Clone)]
pub struct PolicySet {
    set: cedar_policy::PolicySet,
    review: BTreeMap<String, String>,
    digest: String,
    source: String,
}

impl PolicySet {
    /// Reads and validates the policy file at `path`.
    ///
    /// `actions` are declared in the schema besides those the policies
    /// name, typically the actions of the workflow about to run.
    pub fn load<'a>(
        path: &Path,
        actions: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PolicyError> {
        let file = path.display().to_string();
        let io = |source| PolicyError::Io {
            file: file.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { file, size });
        }
        // Read at most one byte past the limit: metadata can lie (devices,
        // files that grow).
        let mut bytes = vec![];
        let f = std::fs::File::open(path).map_err(io)?;
        std::io::Read::read_to_end(
            &mut std::io::Read::take(f, MAX_POLICY_BYTES + 1),
            &mut bytes,
        )
        .map_err(io)?;
        if bytes.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file,
                size: bytes.len() as u64,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| PolicyError::Syntax {
            file: file.clone(),
            message: "not UTF-8 text".into(),
        })?;
        Self::parse(&file, &text, actions)
    }

    /// Parses and validates policy text; `source` names it in errors.
    pub fn parse<'a>(
        source: &str,
        text: &str,
        actions: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PolicyError> {
        let file = source.to_string();
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file,
                size: text.len() as u64,
            });
        }
        // Cedar's parser recurses per level of nesting; deep input would
        // exhaust the stack, so refuse it before parsing.
        let depth = crate::text::max_nesting(text);
        if depth > crate::text::MAX_NESTING {
            let message = format!(
                "expressions nest {depth} levels deep; at most {} are allowed",
                crate::text::MAX_NESTING
            );
            return Err(PolicyError::Syntax { file, message });
        }
        let parsed = cedar_policy::PolicySet::from_str(text).map_err(|e| PolicyError::Syntax {
            file: file.clone(),
            message: one_line(&e),
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Template { file });
        }
        let (set, review) = annotations::rename_by_annotation(&file, text, &parsed)?;

        let mut declared: BTreeSet<String> = actions.into_iter().map(str::to_string).collect();
        declared.extend(schema::actions_named(&set));
        let messages = schema::validate(&set, &declared)?;
        if !messages.is_empty() {
            return Err(PolicyError::Invalid { file, messages });
        }
        Ok(Self {
            set,
            review,
            digest: sha256_text(text),
            source: file,
        })
    }

    /// `sha256:<hex>` of the policy text as loaded.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The file name the set was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Policy ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }

    /// The `@review` permits whose scope admits `agent` doing `action` on
    /// `resource`, as `(policy id, group)` sorted by id: the reviewer
    /// groups a request of that step can be sent to. Conditions are not
    /// evaluated, so a permit counts whenever its scope fits.
    pub fn review_groups_for(
        &self,
        agent: &SpiffeId,
        action: &str,
        resource: &str,
    ) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .set
            .policies()
            .filter(|p| reach::admits(p, agent.as_str(), action, resource))
            .filter_map(|p| {
                let id = p.id().to_string();
                self.review.get(&id).map(|group| (id, group.clone()))
            })
            .collect();
        found.sort();
        found
    }

    /// Decides one request. Never fails: every error is a deny that
    /// carries the error in [`Decision::errors`].
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        match self.evaluate(facts) {
            Ok(decision) => decision,
            Err(error) => self.deny_on_error(error),
        }
    }

    fn evaluate(&self, facts: &Facts<'_>) -> Result<Decision, String> {
        let (request, entities) = build_request(facts)?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| one_line(e))
            .collect();
        if !errors.is_empty() {
            let mut decision = self.deny_on_error(errors.join("; "));
            decision.errors = errors;
            return Ok(decision);
        }
        let mut ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        ids.sort();
        let (outcome, reason) = match response.decision() {
            CedarDecision::Deny if ids.is_empty() => {
                (Outcome::Deny, "no policy permits it".to_string())
            }
            CedarDecision::Deny => (Outcome::Deny, format!("forbidden by {}", ids.join(", "))),
            CedarDecision::Allow => self.allow_or_step_up(&ids),
        };
        Ok(Decision {
            outcome,
            policy_ids: ids,
            errors: vec![],
            policy_digest: self.digest.clone(),
            reason,
        })
    }

    fn allow_or_step_up(&self, ids: &[String]) -> (Outcome, String) {
        // Any reviewing permit makes it a step-up: review is the more
        // restrictive reading. Permits naming different groups cannot be
        // satisfied by one batch, so the request is denied rather than
        // letting one group silently stand in for another.
        let groups: BTreeSet<&String> = ids.iter().filter_map(|id| self.review.get(id)).collect();
        match groups.len() {
            0 => (Outcome::Allow, format!("permitted by {}", ids.join(", "))),
            1 => {
                let group = groups.into_iter().next().cloned().unwrap_or_default();
                let reason = format!("permitted by {} after review by `{group}`", ids.join(", "));
                (Outcome::StepUp { group }, reason)
            }
            _ => {
                let names: Vec<String> = groups.iter().map(|g| format!("`{g}`")).collect();
                let reason = format!(
                    "matching permits ask for review by different groups ({}); one review cannot satisfy both",
                    names.join(", ")
                );
                (Outcome::Deny, reason)
            }
        }
    }

    fn deny_on_error(&self, error: String) -> Decision {
        Decision {
            outcome: Outcome::Deny,
            policy_ids: vec![],
            errors: vec![error.clone()],
            policy_digest: self.digest.clone(),
            reason: format!("denied because evaluation failed: {error}"),
        }
    }
}

fn build_request(facts: &Facts<'_>) -> Result<(Request, Entities), String> {
    let agent = uid("Agent", facts.agent.as_str())?;
    let resource = uid("Resource", facts.resource)?;
    let action = uid("Action", facts.action)?;

    let attrs = HashMap::from([(
        "trust_domain".to_string(),
        RestrictedExpression::new_string(facts.agent.trust_domain().to_string()),
    )]);
    let agent_entity =
        Entity::new(agent.clone(), attrs, HashSet::new()).map_err(|e| one_line(&e))?;
    let resource_entity = Entity::new_no_attrs(resource.clone(), HashSet::new());
    let entities =
        Entities::from_entities([agent_entity, resource_entity], None).map_err(|e| one_line(&e))?;

    let context = Context::from_pairs(context_pairs(facts)).map_err(|e| one_line(&e))?;
    let request = Request::new(agent, action, resource, context, None).map_err(|e| one_line(&e))?;
    Ok((request, entities))
}

fn context_pairs(facts: &Facts<'_>) -> Vec<(String, RestrictedExpression)> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_string());
    let scopes = facts.scopes.iter().map(|sc| s(sc.as_str()));
    vec![
        ("run".into(), s(facts.run)),
        ("step".into(), s(facts.step)),
        ("workflow".into(), s(facts.workflow)),
        ("workflow_digest".into(), s(facts.workflow_digest)),
        ("risk".into(), s(facts.risk)),
        (
            "risk_level".into(),
            RestrictedExpression::new_long(facts.risk_level),
        ),
        ("intent".into(), s(facts.intent)),
        ("scopes".into(), RestrictedExpression::new_set(scopes)),
        (
            "stepups_so_far".into(),
            RestrictedExpression::new_long(i64::from(facts.stepups_so_far)),
        ),
        ("now".into(), RestrictedExpression::new_long(facts.now)),
    ]
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let name =
        EntityTypeName::from_str(&format!("{NAMESPACE}::{kind}")).map_err(|e| one_line(&e))?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

/// `sha256:<hex>` of some text.
pub fn sha256_text(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// Cedar's errors span lines; events and logs want one, and none of them
/// may carry a raw control character out of a policy file.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    crate::text::escape_controls(&words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "spiffe://example.org/agent/deployer";

    fn decide(text: &str, action: &str, risk_level: i64) -> Decision {
        let set = PolicySet::parse("test.cedar", text, [action]).unwrap();
        let agent = SpiffeId::parse(AGENT).unwrap();
        let scopes = ScopeSet::parse(&["deploy:production"]).unwrap();
        set.decide(&Facts {
            agent: &agent,
            action,
            resource: "https://deploy.example.org",
            run: "r1",
            step: "s1",
            workflow: "wf",
            workflow_digest: "sha256:00",
            risk: "high",
            risk_level,
            intent: "ship it",
            scopes: &scopes,
            stepups_so_far: 0,
            now: 1_796_400_000,
        })
    }

    const PERMIT: &str = r#"
        @id("deploy-allowed")
        permit (principal, action == Stepgate::Action::"deploy", resource);
    "#;

    #[test]
    fn a_plain_permit_allows_and_names_itself() {
        let d = decide(PERMIT, "deploy", 2);
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.policy_ids, vec!["deploy-allowed".to_string()]);
        assert_eq!(d.policy_digest, sha256_text(PERMIT));
        assert!(d.errors.is_empty());
    }

    #[test]
    fn no_permit_is_deny() {
        let d = decide(PERMIT, "restart", 2);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.reason, "no policy permits it");
        assert!(d.policy_ids.is_empty());
    }

    #[test]
    fn forbid_wins_over_permit() {
        let text = format!(
            "{PERMIT}\n@id(\"no-critical\")\nforbid (principal, action, resource) when {{ context.risk_level >= 3 }};"
        );
        assert_eq!(decide(&text, "deploy", 2).outcome, Outcome::Allow);
        let d = decide(&text, "deploy", 3);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.policy_ids, vec!["no-critical".to_string()]);
        assert_eq!(d.reason, "forbidden by no-critical");
    }

    #[test]
    fn a_review_annotation_makes_a_step_up_and_review_wins_over_a_plain_permit() {
        let text = format!(
            "{PERMIT}\n@id(\"prod-review\")\n@review(\"release-managers\")\npermit (principal, action, resource) when {{ context.scopes.contains(\"deploy:production\") }};"
        );
        let d = decide(&text, "deploy", 2);
        assert_eq!(
            d.outcome,
            Outcome::StepUp {
                group: "release-managers".into()
            }
        );
        assert_eq!(
            d.policy_ids,
            vec!["deploy-allowed".to_string(), "prod-review".to_string()]
        );
    }

    #[test]
    fn permits_asking_different_reviewer_groups_deny() {
        let text = r#"
            @id("ops-review") @review("ops") permit (principal, action, resource);
            @id("security-review") @review("security") permit (principal, action, resource);
        "#;
        let d = decide(text, "deploy", 2);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(
            d.policy_ids,
            vec!["ops-review".to_string(), "security-review".to_string()]
        );
        assert_eq!(
            d.reason,
            "matching permits ask for review by different groups (`ops`, `security`); one review cannot satisfy both"
        );
    }

    #[test]
    fn an_evaluation_error_is_deny_even_when_a_permit_matches() {
        let text = format!(
            "{PERMIT}\n@id(\"overflows\")\npermit (principal, action, resource) when {{ context.now * 9223372036854775807 > 0 }};"
        );
        let d = decide(&text, "deploy", 2);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.errors.len(), 1);
        assert!(d.errors[0].contains("overflows"), "{:?}", d.errors);
        assert!(d.policy_ids.is_empty());
    }

    #[test]
    fn loading_rejects_type_errors_missing_ids_duplicates_and_misplaced_reviews() {
        let typo = r#"@id("a") permit (principal, action, resource) when { context.risk > 2 };"#;
        assert!(matches!(
            PolicySet::parse("p.cedar", typo, ["deploy"]),
            Err(PolicyError::Invalid { .. })
        ));

        let unknown_attr =
            r#"@id("a") permit (principal, action, resource) when { context.team == "x" };"#;
        assert!(matches!(
            PolicySet::parse("p.cedar", unknown_attr, ["deploy"]),
            Err(PolicyError::Invalid { .. })
        ));

        let no_id = "permit (principal, action, resource);";
        assert!(matches!(
            PolicySet::parse("p.cedar", no_id, ["deploy"]),
            Err(PolicyError::MissingId {
                at: Place {
                    position: 1,
                    line: Some(1)
                },
                ..
            })
        ));

        let dup = r#"@id("a") permit (principal, action, resource); @id("a") forbid (principal, action, resource);"#;
        assert!(
            matches!(PolicySet::parse("p.cedar", dup, ["deploy"]), Err(PolicyError::DuplicateId { id, .. }) if id == "a")
        );

        let review_forbid = r#"@id("a") @review("ops") forbid (principal, action, resource);"#;
        assert!(matches!(
            PolicySet::parse("p.cedar", review_forbid, ["deploy"]),
            Err(PolicyError::BadReview { .. })
        ));

        let bad_group = r#"@id("a") @review("Ops Team") permit (principal, action, resource);"#;
        assert!(matches!(
            PolicySet::parse("p.cedar", bad_group, ["deploy"]),
            Err(PolicyError::BadReview { .. })
        ));

        let syntax = "permit (principal action resource);";
        assert!(matches!(
            PolicySet::parse("p.cedar", syntax, ["deploy"]),
            Err(PolicyError::Syntax { .. })
        ));

        let template = r#"@id("t") permit (principal == ?principal, action, resource);"#;
        assert!(matches!(
            PolicySet::parse("p.cedar", template, ["deploy"]),
            Err(PolicyError::Template { .. })
        ));
    }

    #[test]
    fn an_id_outside_the_charset_is_refused_naming_file_place_and_the_escaped_value() {
        let text = "@id(\"ok\")\npermit (principal, action, resource);\n\n// next\n@id(\"wipe\u{1b}[2Jall\")\nforbid (principal, action, resource);\n";
        let err = PolicySet::parse("p.cedar", text, ["deploy"]).unwrap_err();
        assert!(matches!(
            &err,
            PolicyError::BadId { at: Place { position: 2, line: Some(5) }, value, .. } if value == "wipe\\u{1b}[2Jall"
        ));
        assert_eq!(
            err.to_string(),
            "p.cedar: policy 2 (line 5): `@id(\"wipe\\u{1b}[2Jall\")` is not an id: use 1-128 of A-Z a-z 0-9 . _ : -"
        );
        assert!(!err.to_string().contains('\u{1b}'));

        let long = format!(
            "@id(\"{}\") permit (principal, action, resource);",
            "a".repeat(129)
        );
        let err = PolicySet::parse("p.cedar", &long, ["deploy"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("p.cedar: policy 1 (line 1): `@id(\"{}... (129 characters)\")` is not an id: use 1-128 of A-Z a-z 0-9 . _ : -", "a".repeat(64))
        );
        for bad in ["", " ", "two words", "caf\u{e9}"] {
            let text = format!("@id(\"{bad}\") permit (principal, action, resource);");
            assert!(
                matches!(
                    PolicySet::parse("p.cedar", &text, ["deploy"]),
                    Err(PolicyError::BadId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_repeated_id_names_both_places() {
        let text = "@id(\"a\") permit (principal, action, resource);\n@id(\"b\") permit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);\n";
        let err = PolicySet::parse("p.cedar", text, ["deploy"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.cedar: policy 3 (line 3): `@id(\"a\")` is already the id of policy 1 (line 1)"
        );
    }

    /// One permit per action for `n` actions, plus two guardrails that
    /// apply to every action.
    fn permit_per_action(n: usize) -> (String, Vec<String>) {
        let actions: Vec<String> = (0..n).map(|i| format!("svc-{i}.deploy")).collect();
        let mut text = String::from(
            "@id(\"g1\") forbid (principal, action, resource) unless { principal.trust_domain == \"example.org\" };\n@id(\"g2\") forbid (principal, action, resource) when { context.stepups_so_far > 3 };\n",
        );
        for (i, a) in actions.iter().enumerate() {
            text.push_str(&format!(
                "@id(\"p{i}\") permit (principal, action == Stepgate::Action::\"{a}\", resource) when {{ context.risk_level <= 1 }};\n"
            ));
        }
        (text, actions)
    }

    #[test]
    fn validating_one_permit_per_action_typechecks_linearly_not_quadratically() {
        // Regression: every policy was typechecked under every action, so
        // 2,000 one-action permits cost 2,002 x 2,000 typechecks.
        let (text, actions) = permit_per_action(2000);
        let parsed = cedar_policy::PolicySet::from_str(&text).unwrap();
        let declared: BTreeSet<String> = actions.into_iter().collect();
        let checks = schema::plan(&parsed, &declared);
        let typechecks: usize = checks.iter().map(schema::Check::typechecks).sum();
        // Two guardrails under all 2,000 actions; 125 chunks of 16 permits
        // under their 16 actions.
        assert_eq!(checks.len(), 1 + 2000 / schema::CHUNK);
        assert_eq!(typechecks, 2 * 2000 + 125 * 16 * 16);
    }

    #[test]
    fn chunked_validation_still_finds_errors_in_any_chunk_and_undeclared_actions() {
        let (mut text, actions) = permit_per_action(40);
        let names = || actions.iter().map(String::as_str);
        assert!(PolicySet::parse("p.cedar", &text, names()).is_ok());

        // A type error in the last chunk.
        let typo = text.replace(
            "@id(\"p37\") permit (principal, action == Stepgate::Action::\"svc-37.deploy\", resource) when { context.risk_level <= 1 }",
            "@id(\"p37\") permit (principal, action == Stepgate::Action::\"svc-37.deploy\", resource) when { context.risk_level <= \"high\" }",
        );
        assert_ne!(typo, text);
        let err = PolicySet::parse("p.cedar", &typo, names()).unwrap_err();
        assert!(
            matches!(&err, PolicyError::Invalid { messages, .. } if messages.len() == 1 && messages[0].contains("p37")),
            "{err}"
        );

        // An action named in a condition passes when it is declared (here
        // by the workflow) and fails when it is not, as with one schema.
        text.push_str("@id(\"cond\") permit (principal, action == Stepgate::Action::\"svc-0.deploy\", resource) when { action != Stepgate::Action::\"svc-39.deploy\" };\n");
        assert!(PolicySet::parse("p.cedar", &text, names()).is_ok());
        let undeclared = text.replace(
            "action != Stepgate::Action::\"svc-39.deploy\"",
            "action != Stepgate::Action::\"nowhere\"",
        );
        let err = PolicySet::parse("p.cedar", &undeclared, names()).unwrap_err();
        assert!(
            matches!(&err, PolicyError::Invalid { messages, .. } if messages.len() == 1 && messages[0].contains("nowhere")),
            "{err}"
        );
    }
}
