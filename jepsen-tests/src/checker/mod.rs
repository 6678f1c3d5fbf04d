//! Checkers: they read a history (and, for the set, the final reads) and say
//! whether it satisfies a claim. Each returns a [`Verdict`] that says what
//! was checked and, when invalid, what is wrong in words.

pub mod register;
pub mod session;
pub mod set;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::history::History;

/// A checker's verdict on one subject (a register key, the set, a session).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Which checker: `linearizable`, `set`, `session`.
    pub checker: String,
    /// What it checked: a key, `set`, or a process.
    pub subject: String,
    /// `Some(true)`: holds; `Some(false)`: violated; `None`: the checker ran
    /// out of time or could not decide.
    pub valid: Option<bool>,
    /// Operations (invoke/complete pairs) the verdict is about.
    pub ops_checked: usize,
    /// Each violation found, in words (empty when valid).
    pub problems: Vec<String>,
    /// Files written for this verdict (e.g. a visualization), relative to the
    /// results directory.
    pub artifacts: Vec<String>,
}

/// Linearizability of single-register histories (per key), behind a trait
/// so the engine can be swapped (porcupine-rs now; Knossos reads our EDN).
pub trait LinearizabilityChecker {
    /// Checks every key's read/write/cas operations separately. Writes a
    /// visualization of each failing key into `artifacts_dir` when given.
    fn check(
        &self,
        history: &History,
        timeout: Duration,
        artifacts_dir: Option<&Path>,
    ) -> Vec<Verdict>;
}
