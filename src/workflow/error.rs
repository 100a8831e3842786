//! The one error type of [`crate::workflow`]: every way a file is refused.

/// Why a workflow file was refused.
///
/// Every variant names the `file` (the source name given to
/// [`super::Workflow::parse`] or the path given to [`super::Workflow::load`]);
/// variants about a step name it by id, or by `#n` (its 1-based position)
/// when the id itself is what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The file could not be opened or read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The file is larger than [`super::MAX_FILE_BYTES`].
    #[error("{file}: file is {size} bytes; at most {limit} are allowed")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size in bytes.
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },

    /// The text is not YAML or JSON of the expected shape: a syntax error,
    /// an unknown or missing field, or a value of the wrong type.
    #[error("{file}: {}{message}", at_path(path))]
    Syntax {
        /// The file.
        file: String,
        /// Where in the document, e.g. `steps[2] (deploy-prod).ttl`: keys
        /// joined by `.`, 0-based list positions in brackets, and a step's id
        /// in parentheses when it has a valid one; empty for the whole
        /// document or when the parser could not tell.
        path: String,
        /// What the parser said.
        message: String,
    },

    /// A field has a value the format does not allow.
    #[error("{file}: {}field `{field}`: {message}", in_step(step))]
    Field {
        /// The file.
        file: String,
        /// The step's id (`#n` when the id is the bad field); `None` for a
        /// top-level field.
        step: Option<String>,
        /// The field's name as written in files.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// Two steps have the same id.
    #[error("{file}: step `{step}`: id is used by both step #{first} and step #{second}")]
    DuplicateId {
        /// The file.
        file: String,
        /// The id used twice.
        step: String,
        /// 1-based position of the first step with this id.
        first: usize,
        /// 1-based position of the second.
        second: usize,
    },

    /// A step depends on an id no step has.
    #[error("{file}: step `{step}`: field `depends_on`: no step has id `{dependency}`")]
    UnknownDependency {
        /// The file.
        file: String,
        /// The step whose `depends_on` names the unknown id.
        step: String,
        /// The unknown id.
        dependency: String,
    },

    /// A step lists itself in its own `depends_on`.
    #[error("{file}: step `{step}`: field `depends_on`: a step cannot depend on itself")]
    SelfLoop {
        /// The file.
        file: String,
        /// The step.
        step: String,
    },

    /// Steps depend on each other in a circle, so none of them can start.
    #[error("{file}: field `depends_on`: steps depend on each other in a cycle: `{}`", .path.join(" -> "))]
    Cycle {
        /// The file.
        file: String,
        /// The step ids along the cycle, each depending on the next, starting
        /// and ending with the member written first in the file.
        path: Vec<String>,
    },
}

/// `at `path`: ` or nothing, for [`WorkflowError::Syntax`].
fn at_path(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("at `{path}`: ")
    }
}

/// `step `id`: ` or nothing, for [`WorkflowError::Field`].
fn in_step(step: &Option<String>) -> String {
    match step {
        Some(id) => format!("step `{id}`: "),
        None => String::new(),
    }
}
