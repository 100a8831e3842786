//! The canonical JSON form of a workflow and its digest.
//!
//! Objects are built as `serde_json::Map`s with keys inserted in sorted
//! order. Without serde_json's `preserve_order` feature the map sorts its
//! keys; with it, the map keeps insertion order, which is the same sorted
//! order. So the bytes, and the digest, do not depend on which features
//! another crate in the build turns on.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Step, Workflow, FORMAT_VERSION};

/// The canonical JSON of `wf`; see [`Workflow::to_canonical_json`].
pub(super) fn to_json(wf: &Workflow) -> String {
    let mut top = Map::new();
    top.insert("deadline".into(), wf.deadline_secs.into());
    if let Some(description) = &wf.description {
        top.insert("description".into(), description.as_str().into());
    }
    top.insert("name".into(), wf.name.as_str().into());
    top.insert("stepup_budget".into(), wf.stepup_budget.into());
    top.insert(
        "steps".into(),
        wf.steps().iter().map(step).collect::<Vec<_>>().into(),
    );
    top.insert("version".into(), FORMAT_VERSION.into());
    Value::Object(top).to_string()
}

fn step(step: &Step) -> Value {
    let mut out = Map::new();
    out.insert("action".into(), step.action.as_str().into());
    out.insert("agent".into(), step.agent.as_str().into());
    out.insert("depends_on".into(), step.depends_on.clone().into());
    out.insert("id".into(), step.id.as_str().into());
    out.insert("intent".into(), step.intent.as_str().into());
    out.insert("resource".into(), step.resource.as_str().into());
    out.insert("risk".into(), step.risk.as_str().into());
    out.insert("scopes".into(), step.scopes.to_strings().into());
    out.insert("ttl".into(), step.ttl_secs.into());
    Value::Object(out)
}

/// `sha256:` and the lowercase hex SHA-256 of `canonical`.
pub(super) fn digest(canonical: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}
