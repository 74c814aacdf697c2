//! Tests: the profile format (`parse`), the database and priorities (`db`), the walk planner
//! (`plan`), and property tests over all three (`props`).

mod db;
mod parse;
mod plan;
mod props;

use crate::{Depth, HoardEntry};

/// An entry, unchecked, for expected values.
pub(crate) fn entry(path: &str, priority: u16, depth: Depth, future: bool) -> HoardEntry {
    HoardEntry { path: path.into(), priority, depth, future }
}
