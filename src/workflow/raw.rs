//! The document as written: serde structs that mirror the file exactly.
//!
//! Nothing here judges values; it only decides whether the text is YAML or
//! JSON of the right shape (fields known, present and of the right type)
//! and, when it is not, says where. [`super::rules`] judges the values.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_path_to_error::{Path, Segment};

use super::{rules, Risk, WorkflowError, FORMAT_VERSION};

/// The top level of a workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of workflow fields")]
pub(super) struct RawWorkflow {
    pub version: u64,
    pub name: String,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub deadline: Option<RawDuration>,
    #[serde(default, deserialize_with = "present")]
    pub stepup_budget: Option<u64>,
    pub steps: Vec<RawStep>,
}

/// One entry of `steps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of step fields")]
pub(super) struct RawStep {
    pub id: String,
    pub agent: String,
    pub action: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub intent: String,
    pub risk: Risk,
    pub ttl: RawDuration,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A duration as written: whole seconds, or text such as `2m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawDuration {
    Secs(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = RawDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as `90s`, `2m` or `1h`, or whole seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
        Ok(RawDuration::Secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
        u64::try_from(v)
            .map(RawDuration::Secs)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
        Ok(RawDuration::Text(v.to_string()))
    }
}

/// For optional fields: absent means `None`, but an explicit `null` is a
/// type error, as the schema says, rather than a silent default.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Parses `text` as YAML, or as JSON when it starts with `{`.
pub(super) fn read(file: &str, text: &str) -> Result<RawWorkflow, WorkflowError> {
    if text.trim_start().starts_with('{') {
        read_json(file, text)
    } else {
        read_yaml(file, text)
    }
}

/// YAML is parsed into a value first: that rejects duplicate keys, and the
/// value answers "which step is at `steps[i]`" when an error needs it.
fn read_yaml(file: &str, text: &str) -> Result<RawWorkflow, WorkflowError> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| syntax(file, String::new(), e.to_string()))?;
    if doc.is_null() {
        return Err(syntax(file, String::new(), "document is empty".to_string()));
    }

    let lookup = Lookup::Yaml(&doc);
    lookup.check_version(file)?;
    serde_path_to_error::deserialize(&doc)
        .map_err(|e| syntax(file, render_path(e.path(), &lookup), e.inner().to_string()))
}

/// JSON is read straight from the text so that duplicate keys and trailing
/// text are errors and messages carry line and column; it is parsed into a
/// value only when an error needs a step's id.
fn read_json(file: &str, text: &str) -> Result<RawWorkflow, WorkflowError> {
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, RawWorkflow>(&mut de) {
        Ok(raw) => {
            de.end()
                .map_err(|e| syntax(file, String::new(), e.to_string()))?;
            Ok(raw)
        }
        Err(e) => {
            let doc: Option<serde_json::Value> = serde_json::from_str(text).ok();
            let lookup = doc.as_ref().map_or(Lookup::Nothing, Lookup::Json);
            lookup.check_version(file)?;
            Err(syntax(
                file,
                render_path(e.path(), &lookup),
                e.inner().to_string(),
            ))
        }
    }
}

fn syntax(file: &str, path: String, message: String) -> WorkflowError {
    WorkflowError::Syntax {
        file: file.to_string(),
        path,
        message,
    }
}

/// The parsed document, when there is one, for looking things up in it.
enum Lookup<'a> {
    Yaml(&'a serde_yaml::Value),
    Json(&'a serde_json::Value),
    Nothing,
}

impl Lookup<'_> {
    /// `version` when it is a whole number.
    fn version(&self) -> Option<u64> {
        match self {
            Lookup::Yaml(doc) => doc.get("version")?.as_u64(),
            Lookup::Json(doc) => doc.get("version")?.as_u64(),
            Lookup::Nothing => None,
        }
    }

    /// The `id` of `steps[index]` when it is a string.
    fn step_id(&self, index: usize) -> Option<&str> {
        match self {
            Lookup::Yaml(doc) => doc.get("steps")?.get(index)?.get("id")?.as_str(),
            Lookup::Json(doc) => doc.get("steps")?.get(index)?.get("id")?.as_str(),
            Lookup::Nothing => None,
        }
    }

    /// Refuses a document of another version before its fields are judged.
    fn check_version(&self, file: &str) -> Result<(), WorkflowError> {
        match self.version() {
            Some(version) if version != FORMAT_VERSION => Err(rules::bad_version(file, version)),
            _ => Ok(()),
        }
    }
}

/// Writes a serde path as `steps[2] (deploy-prod).ttl`.
///
/// A step is named by its id only when the id is valid, so a message never
/// repeats a long or garbled value. Segments the parser could not name end
/// the path.
fn render_path(path: &Path, lookup: &Lookup<'_>) -> String {
    let mut out = String::new();
    let mut under_steps = false;
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                let id = lookup.step_id(*index).filter(|_| under_steps);
                if let Some(id) = id.filter(|id| rules::is_step_id(id)) {
                    out.push_str(&format!(" ({id})"));
                }
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => break,
        }
        under_steps = out == "steps";
    }
    out
}
