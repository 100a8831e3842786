//! Plan: what a run of a workflow would meet, decided before it starts.
//!
//! For each step in topological order the policy is asked with the step's
//! declared scopes; step-ups are then grouped into the review batches a
//! run would open. The engine opens exactly these batches when a run
//! starts, and `stepgate plan` prints them. Pure.

use serde::Serialize;

use crate::policy::{Decision, Facts, Outcome, PolicySet};
use crate::review::{plan_batches, PlannedBatch, StepUp};
use crate::workflow::Workflow;

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
    };
    (plan, planned)
}
