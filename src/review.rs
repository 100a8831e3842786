//! Review: which step-ups are reviewed together, and who may decide.
//!
//! Chained agents trigger step-ups faster than people can review them, so
//! stepgate gathers them. Two step-ups go into one batch when they go to
//! the same reviewer group and one of them depends, directly or through
//! other steps, on the other — they lie on one chain of the graph. The
//! batches are the connected groups of that relation, so a reviewer sees
//! a whole chain once instead of one prompt per step.
//!
//! A decision binds to what was shown: the batch's binding digest covers
//! every item's step, agent, action, resource, scopes and intent digests.
//! Reviewers are listed per group in a reviewers file; a reviewer may not
//! decide a batch of a run they started.
//!
//! Pure: the engine calls in here with a workflow and preview decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::BatchItem;
use crate::policy::sha256_text;
use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;
use crate::workflow::{Step, Workflow};

/// Largest reviewers file accepted, in bytes.
pub const MAX_REVIEWERS_BYTES: u64 = 256 * 1024;

/// Why a reviewers file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReviewersError {
    /// Could not read the file.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("{file}: is larger than {MAX_REVIEWERS_BYTES} bytes")]
    TooLarge {
        /// The file.
        file: String,
    },
    /// The YAML did not parse or had unknown fields.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A group is empty or badly named.
    #[error("{file}: group `{group}`: {message}")]
    Group {
        /// The file.
        file: String,
        /// The group.
        group: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewersDoc {
    groups: BTreeMap<String, Vec<SpiffeId>>,
    #[serde(default)]
    requester: Option<SpiffeId>,
}

/// Who may decide the batches of each reviewer group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviewers {
    groups: BTreeMap<String, BTreeSet<SpiffeId>>,
    requester: Option<SpiffeId>,
}

impl Reviewers {
    /// Reads a reviewers file:
    ///
    /// ```yaml
    /// groups:
    ///   release-managers: [spiffe://example.org/human/riley]
    /// requester: spiffe://example.org/human/dana   # optional, used by the demo
    /// ```
    pub fn load(path: &Path) -> Result<Self, ReviewersError> {
        let file = path.display().to_string();
        let io = |source| ReviewersError::Io {
            file: file.clone(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.len() > MAX_REVIEWERS_BYTES {
            return Err(ReviewersError::TooLarge { file });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&file, &text)
    }

    /// Parses reviewers YAML; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ReviewersError> {
        let doc: ReviewersDoc = serde_yaml::from_str(text).map_err(|e| ReviewersError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let mut groups = BTreeMap::new();
        for (group, members) in doc.groups {
            let bad = |message: &str| ReviewersError::Group {
                file: file.to_string(),
                group: group.clone(),
                message: message.to_string(),
            };
            if !valid_group(&group) {
                return Err(bad("group names are 1-64 of a-z 0-9 - _"));
            }
            if members.is_empty() {
                return Err(bad("has no members"));
            }
            groups.insert(group.clone(), members.into_iter().collect());
        }
        Ok(Self {
            groups,
            requester: doc.requester,
        })
    }

    /// Builds a directory from `(group, members)` pairs.
    pub fn from_groups<I, M>(groups: I) -> Self
    where
        I: IntoIterator<Item = (String, M)>,
        M: IntoIterator<Item = SpiffeId>,
    {
        let groups = groups
            .into_iter()
            .map(|(g, m)| (g, m.into_iter().collect()))
            .collect();
        Self {
            groups,
            requester: None,
        }
    }

    /// True when `who` belongs to `group`.
    pub fn is_member(&self, group: &str, who: &SpiffeId) -> bool {
        self.groups.get(group).is_some_and(|m| m.contains(who))
    }

    /// True when `who` belongs to any group.
    pub fn is_reviewer(&self, who: &SpiffeId) -> bool {
        self.groups.values().any(|m| m.contains(who))
    }

    /// Members of `group`, sorted.
    pub fn members(&self, group: &str) -> Vec<&SpiffeId> {
        self.groups
            .get(group)
            .map(|m| m.iter().collect())
            .unwrap_or_default()
    }

    /// Group names, sorted.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.keys().map(String::as_str).collect()
    }

    /// The requester the file names for demos, if any.
    pub fn requester(&self) -> Option<&SpiffeId> {
        self.requester.as_ref()
    }
}

/// True when `g` is a reviewer group name: 1-64 of `a-z 0-9 - _`.
pub fn valid_group(g: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_');
    !g.is_empty() && g.len() <= 64 && g.chars().all(ok)
}

/// A step that needs review, as policy previewed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// Step id.
    pub step: String,
    /// Reviewer group.
    pub group: String,
    /// Policy ids that asked for review.
    pub policy_ids: Vec<String>,
}

/// A batch to open: a reviewer group and its steps in topological order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    /// Reviewer group.
    pub group: String,
    /// Step-ups in the batch, topological order.
    pub steps: Vec<StepUp>,
}

/// Groups step-ups into batches: same group and on one chain.
///
/// Batches come out ordered by their first step in topological order,
/// so planning is deterministic.
pub fn plan_batches(workflow: &Workflow, stepups: &[StepUp]) -> Vec<PlannedBatch> {
    let order: Vec<&str> = workflow.topo_order().map(|s| s.id.as_str()).collect();
    let pos = |id: &str| order.iter().position(|s| *s == id).unwrap_or(usize::MAX);
    let mut sorted: Vec<&StepUp> = stepups.iter().collect();
    sorted.sort_by_key(|s| pos(&s.step));

    // Union-find over the step-ups; n is bounded by MAX_STEPS, so the
    // quadratic pass is at most a few hundred thousand reachability checks.
    let n = sorted.len();
    let mut parent: Vec<usize> = (0..n).collect();
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (sorted[i], sorted[j]);
            let chained = workflow.reaches(&a.step, &b.step) || workflow.reaches(&b.step, &a.step);
            if a.group == b.group && chained {
                let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                parent[ri.max(rj)] = ri.min(rj);
            }
        }
    }

    let mut batches: BTreeMap<usize, PlannedBatch> = BTreeMap::new();
    for (i, stepup) in sorted.iter().enumerate() {
        let root = find(&mut parent, i);
        batches
            .entry(root)
            .or_insert_with(|| PlannedBatch {
                group: stepup.group.clone(),
                steps: vec![],
            })
            .steps
            .push((*stepup).clone());
    }
    batches.into_values().collect()
}

fn find(parent: &mut [usize], i: usize) -> usize {
    let mut root = i;
    while parent[root] != root {
        root = parent[root];
    }
    parent[i] = root;
    root
}

/// What the reviewer is shown for one step.
pub fn item_for(step: &Step, policy_ids: &[String]) -> BatchItem {
    BatchItem {
        step: step.id.clone(),
        agent: step.agent.to_string(),
        action: step.action.clone(),
        resource: step.resource.clone(),
        scopes: step.scopes.to_strings(),
        intent: step.intent.clone(),
        intent_digest: sha256_text(&step.intent),
        scope_digest: scope_digest(&step.scopes),
        risk: step.risk,
        policy_ids: policy_ids.to_vec(),
    }
}

/// `sha256:<hex>` of the sorted, space-joined scopes.
pub fn scope_digest(scopes: &ScopeSet) -> String {
    sha256_text(&scopes.to_claim())
}

/// The digest a decision must quote: it covers the batch, run, group and
/// every item as shown.
pub fn binding_digest(
    batch: &uuid::Uuid,
    run: &uuid::Uuid,
    group: &str,
    items: &[BatchItem],
) -> String {
    let mut text = format!("stepgate-batch-v1\n{batch}\n{run}\n{group}\n");
    for item in items {
        text.push_str(&format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            item.step,
            item.agent,
            item.action,
            item.resource,
            item.scope_digest,
            item.intent_digest
        ));
    }
    sha256_text(&text)
}
