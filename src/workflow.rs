//! Workflow files: the task graph a run executes.
//!
//! A workflow is a YAML (or JSON) file naming steps; each step says which
//! agent performs it, which action on which resource, the scopes it needs,
//! the intent a reviewer reads, its risk and its token TTL. Steps depend on
//! one another and form a DAG held in a petgraph graph. Everything a person
//! can get wrong in such a file is rejected here, with an error naming the
//! file, the step and the field; the engine only ever sees a valid graph.
//!
//! Neighbours: [`crate::scope`] and [`crate::spiffe`] for field syntax,
//! [`crate::review`] for the chains step-ups are batched along.
//!
//! # Format
//!
//! A file is YAML; when its first non-whitespace character is `{` it is read
//! as JSON instead. `schemas/workflow.schema.json` describes the same format
//! for editors and other tools. The top level holds `version` (must be 1),
//! `name`, an optional `description`, an optional run `deadline` (default
//! one hour), an optional `stepup_budget` (default 10) and `steps`. Each step
//! holds `id`, `agent`, `action`, `resource`, `scopes`, `intent`, `risk`,
//! `ttl` and an optional `depends_on` list. Durations are written `90s`,
//! `2m`, `1h` or as a whole number of seconds. Unknown fields are errors at
//! every level, because a misspelt field would otherwise be ignored silently.
//!
//! # Validation order
//!
//! [`Workflow::parse`] stops at the first problem and reports it as a
//! [`WorkflowError`]. Problems are found in file order: the document's
//! syntax and shape, then the top-level fields, then each step from the
//! first to the last (its fields in the order listed above, a duplicate id,
//! its dependencies), and last of all a dependency cycle. A file whose
//! `version` is not 1 is reported as such before anything else in it,
//! since a later format may allow fields this one does not know.
//!
//! # Identity
//!
//! A loaded workflow has a canonical JSON form
//! ([`Workflow::to_canonical_json`]) and a digest of it
//! ([`Workflow::digest`]) that tokens and events carry as `wf`. The digest
//! depends on what the file means, not on how it is written: YAML and JSON,
//! `2m` and `120`, comments and key order all give the same digest.
//!
//! ```
//! use stepgate::workflow::Workflow;
//!
//! let text = r#"
//! version: 1
//! name: nightly
//! steps:
//!   - id: build
//!     agent: spiffe://dev.stepgate.local/agent/builder
//!     action: build.run
//!     resource: https://ci.example.internal
//!     scopes: [ci:build]
//!     intent: Build the nightly artefacts.
//!     risk: low
//!     ttl: 5m
//!   - id: publish
//!     agent: spiffe://dev.stepgate.local/agent/publisher
//!     action: artefacts.publish
//!     resource: https://artefacts.example.internal
//!     scopes: [artefacts:write]
//!     intent: Publish the nightly artefacts.
//!     risk: medium
//!     ttl: 120
//!     depends_on: [build]
//! "#;
//! let wf = Workflow::parse("nightly.yaml", text)?;
//! assert_eq!(wf.deadline_secs, 3600);
//! assert_eq!(wf.step("publish").map(|s| s.ttl_secs), Some(120));
//! assert!(wf.reaches("build", "publish"));
//! assert!(wf.digest().starts_with("sha256:"));
//! # Ok::<(), stepgate::workflow::WorkflowError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;

mod canonical;
mod dag;
mod error;
mod raw;
mod rules;
#[cfg(test)]
mod tests;

pub use error::WorkflowError;

/// Largest workflow file accepted, in bytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most steps one workflow may hold.
pub const MAX_STEPS: usize = 512;
/// Shortest step token TTL, in seconds.
pub const MIN_TTL_SECS: u64 = 10;
/// Longest step token TTL, in seconds.
pub const MAX_TTL_SECS: u64 = 3600;
/// Longest intent text, in bytes.
pub const MAX_INTENT_BYTES: usize = 2000;
/// Default run deadline, in seconds, when the file names none.
pub const DEFAULT_DEADLINE_SECS: u64 = 3600;
/// Longest run deadline, in seconds.
pub const MAX_DEADLINE_SECS: u64 = 24 * 3600;
/// Default number of step-ups a run may make before it pauses.
pub const DEFAULT_STEPUP_BUDGET: u32 = 10;
/// Largest step-up budget a file may set.
pub const MAX_STEPUP_BUDGET: u32 = 1000;
/// Shortest run deadline, in seconds: a run shorter than a minute cannot
/// wait for anything, let alone a person.
pub const MIN_DEADLINE_SECS: u64 = 60;
/// Longest resource (token audience), in bytes.
pub const MAX_RESOURCE_BYTES: usize = 256;
/// The only value of `version` this build reads.
pub const FORMAT_VERSION: u64 = 1;

/// How risky a step is; policies read it as `context.risk`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Read-only or easily undone.
    Low,
    /// Changes something that can be rolled back.
    Medium,
    /// Changes production or sensitive data.
    High,
    /// Irreversible or wide blast radius.
    Critical,
}

impl Risk {
    /// The lowercase name used in files and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }

    /// 0 for low up to 3 for critical, for ordered comparisons in policy.
    pub fn level(self) -> i64 {
        self as i64
    }
}

/// One validated step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// Unique within the workflow: `[a-z0-9][a-z0-9_-]{0,63}`.
    pub id: String,
    /// The workload that performs the step.
    pub agent: SpiffeId,
    /// The action, used as the Cedar action id: `[a-z][a-z0-9_.-]{0,63}`.
    pub action: String,
    /// The resource, used as the token audience (one value, 1..=256 bytes, no whitespace).
    pub resource: String,
    /// Scopes the step may ask for; never empty.
    pub scopes: ScopeSet,
    /// What the step is for, in words a reviewer reads; 1..=MAX_INTENT_BYTES, trimmed.
    pub intent: String,
    /// Risk class.
    pub risk: Risk,
    /// Token lifetime cap, seconds, within MIN_TTL_SECS..=MAX_TTL_SECS.
    pub ttl_secs: u64,
    /// Ids of the steps that must complete first, as written.
    pub depends_on: Vec<String>,
}

/// A validated workflow: its settings and a DAG of steps.
///
/// Built only by [`Workflow::load`] or [`Workflow::parse`], so every value
/// reachable from it has passed the rules in this module: step ids are
/// unique, every dependency names a step and the graph has no cycle.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The workflow's name: `[a-z0-9][a-z0-9_-]{0,63}`.
    pub name: String,
    /// Free text for people; `None` when the file has none.
    pub description: Option<String>,
    /// Longest a run may take, in seconds; [`DEFAULT_DEADLINE_SECS`] when the
    /// file names none, within [`MIN_DEADLINE_SECS`]..=[`MAX_DEADLINE_SECS`].
    pub deadline_secs: u64,
    /// Step-ups a run may make before it pauses; [`DEFAULT_STEPUP_BUDGET`]
    /// when the file names none, at most [`MAX_STEPUP_BUDGET`].
    pub stepup_budget: u32,
    /// Steps in file order.
    steps: Vec<Step>,
    /// Step id to its position in `steps`.
    index: HashMap<String, usize>,
    /// One node per step, added in file order so that node `i` is step `i`
    /// (the weight repeats it); an edge runs from a dependency to its
    /// dependent.
    graph: DiGraph<usize, ()>,
    /// Positions in `steps`, topologically sorted, ties broken by file order.
    order: Vec<usize>,
    /// `sha256:<hex>` of the canonical JSON, computed at load.
    digest: String,
    /// The name the file was loaded under, used in errors.
    source: String,
}

impl Workflow {
    /// Reads and validates the workflow file at `path`.
    ///
    /// The file's size is checked before it is read: one larger than
    /// [`MAX_FILE_BYTES`] is refused with [`WorkflowError::TooLarge`]. The
    /// path as displayed is the `file` named in errors and [`Self::source`].
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let file = path.display().to_string();
        let bytes = match read_bounded(path) {
            Ok(bytes) => bytes,
            Err(ReadError::Io(source)) => return Err(WorkflowError::Io { file, source }),
            Err(ReadError::TooLarge(size)) => {
                return Err(WorkflowError::TooLarge {
                    file,
                    size,
                    limit: MAX_FILE_BYTES,
                })
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => Self::parse(&file, &text),
            Err(_) => Err(WorkflowError::Syntax {
                file,
                path: String::new(),
                message: "file is not valid utf-8".to_string(),
            }),
        }
    }

    /// Validates workflow text; `source` names it in errors (a file name).
    ///
    /// Text longer than [`MAX_FILE_BYTES`] is refused. Text whose first
    /// non-whitespace character is `{` is read as JSON, anything else as
    /// YAML.
    pub fn parse(source: &str, text: &str) -> Result<Self, WorkflowError> {
        let size = u64::try_from(text.len()).unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(WorkflowError::TooLarge {
                file: source.to_string(),
                size,
                limit: MAX_FILE_BYTES,
            });
        }
        // Parsers recurse per level of nesting; refuse deep input first.
        let depth = crate::text::max_nesting(text);
        if depth > crate::text::MAX_NESTING {
            return Err(WorkflowError::Syntax {
                file: source.to_string(),
                path: String::new(),
                message: format!(
                    "brackets nest {depth} levels deep; at most {} are allowed",
                    crate::text::MAX_NESTING
                ),
            });
        }
        let document = raw::read(source, text)?;
        let checked = rules::check(source, document)?;
        let dag = dag::Dag::build(source, &checked.steps)?;
        let mut workflow = Self {
            name: checked.name,
            description: checked.description,
            deadline_secs: checked.deadline_secs,
            stepup_budget: checked.stepup_budget,
            steps: checked.steps,
            index: dag.index,
            graph: dag.graph,
            order: dag.order,
            digest: String::new(),
            source: source.to_string(),
        };
        workflow.digest = canonical::digest(&workflow.to_canonical_json());
        Ok(workflow)
    }

    /// The steps in file order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step with this id, if there is one.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.index.get(id).and_then(|&i| self.steps.get(i))
    }

    /// The steps in an order where each comes after all it depends on.
    ///
    /// Among steps whose dependencies are all done, the one written first in
    /// the file comes first, so the order is the same on every load.
    pub fn topo_order(&self) -> impl Iterator<Item = &Step> {
        self.order.iter().filter_map(|&i| self.steps.get(i))
    }

    /// The ids step `id` depends on directly, as written in the file; empty
    /// when the step depends on nothing or there is no such step.
    pub fn dependencies(&self, id: &str) -> &[String] {
        self.step(id).map_or(&[], |s| s.depends_on.as_slice())
    }

    /// True when `descendant` depends on `ancestor`, directly or through
    /// other steps. False when either id is unknown or both are the same.
    pub fn reaches(&self, ancestor: &str, descendant: &str) -> bool {
        if ancestor == descendant {
            return false;
        }
        match (self.index.get(ancestor), self.index.get(descendant)) {
            (Some(&from), Some(&to)) => petgraph::algo::has_path_connecting(
                &self.graph,
                NodeIndex::new(from),
                NodeIndex::new(to),
                None,
            ),
            _ => false,
        }
    }

    /// `sha256:` and the lowercase hex SHA-256 of [`Self::to_canonical_json`],
    /// as computed when the workflow was loaded.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The name the workflow was loaded under (the path for [`Self::load`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The workflow as compact JSON that any two equal workflows share.
    ///
    /// Durations are whole seconds (`deadline`, `ttl`), defaults are written
    /// out, intents are trimmed, scopes sorted, steps and `depends_on` kept
    /// in file order, `description` left out when absent, and the keys of
    /// every object sorted. It is itself a valid workflow file: parsing it
    /// gives back an equal workflow with the same digest.
    pub fn to_canonical_json(&self) -> String {
        canonical::to_json(self)
    }
}

impl PartialEq for Workflow {
    /// Two workflows are equal when their canonical JSON is; where they were
    /// loaded from does not matter.
    fn eq(&self, other: &Self) -> bool {
        self.to_canonical_json() == other.to_canonical_json()
    }
}

impl Eq for Workflow {}

impl fmt::Display for Workflow {
    /// `name (digest)`, for logs and CLI output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.digest)
    }
}

/// Why [`read_bounded`] gave up.
enum ReadError {
    Io(std::io::Error),
    TooLarge(u64),
}

/// Reads at most [`MAX_FILE_BYTES`] from `path`, refusing by size first.
///
/// The size is checked on the open handle, so the check and the read see
/// the same file; the read is still bounded because the file may grow in
/// between or be a device that reports no size.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    let size = file.metadata().map_err(ReadError::Io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(size));
    }

    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(read));
    }
    Ok(bytes)
}
