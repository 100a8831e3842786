//! Plan: what a run of a workflow would meet, decided before it starts.
//!
//! For each step in topological order the policy is asked with the step's
//! declared scopes; step-ups are then grouped into the review batches a
//! run would open. The engine opens exactly these batches when a run
//! starts, and `stepgate plan` prints them.
//!
//! [`check_reviewers`] holds a reviewers file against every reviewer group
//! the policy can ask for on the workflow (see
//! [`PolicySet::review_groups_for`]): a group without members is an error,
//! a group whose only member is the agent it would review is a warning.
//! Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::{Decision, Facts, Outcome, PolicySet};
use crate::review::{plan_batches, PlannedBatch, Reviewers, StepUp};
use crate::workflow::{Step, Workflow};

/// One step with its preview decision.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// Step id.
    pub step: String,
    /// Agent.
    pub agent: String,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// Declared scopes.
    pub scopes: Vec<String>,
    /// Risk.
    pub risk: String,
    /// Direct dependencies.
    pub depends_on: Vec<String>,
    /// The preview decision.
    pub decision: Decision,
}

/// The whole preview of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Workflow name.
    pub workflow: String,
    /// Workflow digest.
    pub workflow_digest: String,
    /// Policy set digest.
    pub policy_digest: String,
    /// Steps in topological order.
    pub steps: Vec<PlannedStep>,
    /// Review batches a run opens, by first step.
    pub batches: Vec<BatchPlan>,
    /// The reviewers file held against the policy, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewers: Option<ReviewerCheck>,
}

/// What a reviewers file lacks for a workflow under a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewerCheck {
    /// The reviewers file.
    pub file: String,
    /// Findings that stop a plan: groups without members.
    pub errors: Vec<ReviewerFinding>,
    /// Findings a run survives but nobody should want: self-review.
    pub warnings: Vec<ReviewerFinding>,
}

/// What kind of problem a [`ReviewerFinding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The policy can ask a group that the file does not list.
    NoMembers,
    /// The only member of a group is the agent of a step it would review;
    /// the engine refuses that decision, so the batch can only expire.
    SelfReview,
}

/// One problem with a reviewers file, as data and as a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewerFinding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// The reviewer group.
    pub group: String,
    /// Steps that can be sent to the group, topological order.
    pub steps: Vec<String>,
    /// Ids of the `@review` permits that would send them, sorted.
    pub policy_ids: Vec<String>,
    /// For self-review: the agent that is the group's only member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The finding in words, one line.
    pub message: String,
}

/// A planned review batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchPlan {
    /// Reviewer group.
    pub group: String,
    /// Step ids, topological order.
    pub steps: Vec<String>,
}

impl Plan {
    /// Number of steps whose preview is deny.
    pub fn denied(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.decision.outcome == Outcome::Deny)
            .count()
    }
}

/// Previews every step of `workflow` under `policy` at `now` (seconds),
/// as run `run`.
pub fn preview(
    workflow: &Workflow,
    policy: &PolicySet,
    run: &str,
    now: i64,
) -> (Plan, Vec<PlannedBatch>) {
    let mut steps = vec![];
    let mut stepups = vec![];
    for step in workflow.topo_order() {
        let so_far = u32::try_from(stepups.len()).unwrap_or(u32::MAX);
        let facts = Facts::for_step(workflow, step, run, &step.agent, &step.scopes, so_far, now);
        let decision = policy.decide(&facts);
        if let Outcome::StepUp { group } = &decision.outcome {
            stepups.push(StepUp {
                step: step.id.clone(),
                group: group.clone(),
                policy_ids: decision.policy_ids.clone(),
            });
        }
        steps.push(PlannedStep {
            step: step.id.clone(),
            agent: step.agent.to_string(),
            action: step.action.clone(),
            resource: step.resource.clone(),
            scopes: step.scopes.to_strings(),
            risk: step.risk.as_str().to_string(),
            depends_on: step.depends_on.clone(),
            decision,
        });
    }
    let planned = plan_batches(workflow, &stepups);
    let batches = planned
        .iter()
        .map(|b| BatchPlan {
            group: b.group.clone(),
            steps: b.steps.iter().map(|s| s.step.clone()).collect(),
        })
        .collect();
    let plan = Plan {
        workflow: workflow.name.clone(),
        workflow_digest: workflow.digest().to_string(),
        policy_digest: policy.digest().to_string(),
        steps,
        batches,
        reviewers: None,
    };
    (plan, planned)
}

/// Steps and policy ids that can send work to one group.
#[derive(Debug, Default)]
struct Demand {
    steps: Vec<String>,
    policy_ids: Vec<String>,
}

/// Holds `reviewers` (read from `file`) against every reviewer group that
/// `policy` can ask for on `workflow`.
pub fn check_reviewers(
    workflow: &Workflow,
    policy: &PolicySet,
    reviewers: &Reviewers,
    file: &str,
) -> ReviewerCheck {
    let mut demand: BTreeMap<String, Demand> = BTreeMap::new();
    let mut warnings = vec![];
    for step in workflow.topo_order() {
        for (group, policy_ids) in groups_for(policy, step) {
            if reviewers.members(&group) == [&step.agent] {
                warnings.push(self_review(&group, step, policy_ids.clone()));
            }
            let d = demand.entry(group).or_default();
            d.steps.push(step.id.clone());
            d.policy_ids.extend(policy_ids);
        }
    }
    let errors = demand
        .into_iter()
        .filter(|(group, _)| reviewers.members(group).is_empty())
        .map(|(group, d)| no_members(group, d))
        .collect();
    ReviewerCheck {
        file: file.to_string(),
        errors,
        warnings,
    }
}

/// The groups the policy can send `step` to, each with the ids of the
/// permits that would.
fn groups_for(policy: &PolicySet, step: &Step) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (policy_id, group) in policy.review_groups_for(&step.agent, &step.action, &step.resource) {
        groups.entry(group).or_default().push(policy_id);
    }
    groups
}

fn no_members(group: String, mut d: Demand) -> ReviewerFinding {
    d.policy_ids.sort();
    d.policy_ids.dedup();
    let message = format!(
        "review group `{group}` has no members; {} can send {} to it",
        names("policy", &d.policy_ids),
        names("step", &d.steps)
    );
    ReviewerFinding {
        kind: FindingKind::NoMembers,
        group,
        steps: d.steps,
        policy_ids: d.policy_ids,
        agent: None,
        message,
    }
}

fn self_review(group: &str, step: &Step, policy_ids: Vec<String>) -> ReviewerFinding {
    let message = format!(
        "step `{}`: its agent {} is the only member of review group `{group}`, and nobody may review their own step",
        step.id, step.agent
    );
    ReviewerFinding {
        kind: FindingKind::SelfReview,
        group: group.to_string(),
        steps: vec![step.id.clone()],
        policy_ids,
        agent: Some(step.agent.to_string()),
        message,
    }
}

/// `policy `a`` or `policies `a`, `b``.
fn names(noun: &str, items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    let noun = match (items.len(), noun) {
        (1, _) => noun.to_string(),
        (_, "policy") => "policies".to_string(),
        _ => format!("{noun}s"),
    };
    format!("{noun} {}", quoted.join(", "))
}
