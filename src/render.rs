//! Templates: compile once, render against a snapshot of znode values (pure; no I/O).
//!
//! Rendering discovers dependencies: every `znode()`, `exists()` and `children()` call is
//! recorded, and a dependency not read yet makes the outcome `Pending` (the render still
//! runs to the end so that all unknown dependencies of one pass are found at once).
use std::collections::BTreeSet;

use crate::config::TemplateSpec;
use crate::model::{Dep, Value};

/// The values known so far. `None` means "not read yet" (not "missing": that is `Value::Missing`).
pub trait Snapshot {
    fn get(&self, dep: &Dep) -> Option<&Value>;
}

/// Why a template could not be compiled or rendered. Every variant names the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: {message}")]
    Template { template: String, line: Option<usize>, message: String },
    #[error("{template}: znode {znode} does not exist")]
    MissingZnode { template: String, line: Option<usize>, znode: String },
}

/// Result of one render pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderOutcome {
    Done(Vec<u8>),
    /// Some dependencies were not read yet; render again once they arrive.
    Pending,
    Failed(RenderError),
}

/// Outcome plus every dependency the pass touched (watched even when the render failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub deps: BTreeSet<Dep>,
    pub outcome: RenderOutcome,
}

/// A compiled template.
#[derive(Debug)]
pub struct Template {
    pub name: String,
}

impl Template {
    pub fn compile(spec: &TemplateSpec) -> Result<Template, RenderError> {
        Ok(Template { name: spec.name.clone() })
    }

    pub fn render(&self, _snapshot: &dyn Snapshot) -> Rendered {
        Rendered { deps: BTreeSet::new(), outcome: RenderOutcome::Pending }
    }
}
