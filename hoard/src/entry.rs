//! One hoard entry, and the rules for the paths entries name.

use serde::{Deserialize, Serialize};

/// The priority of an entry that names none.
pub const DEFAULT_PRIORITY: u16 = 10;
/// The highest priority; the lowest is 1.
pub const MAX_PRIORITY: u16 = 1000;
/// The longest path an entry may name, in bytes once normalised: short enough that any entry
/// formats to a line within [`crate::MAX_LINE_LEN`] even when every byte needs an escape.
pub const MAX_PATH_LEN: usize = 2000;

// `a "` + the path with every byte escaped + `" 1000:c+`.
const _: () = assert!(2 * MAX_PATH_LEN + 12 <= crate::MAX_LINE_LEN);

/// How far below its path an entry reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Depth {
    /// The path itself only (no `c` or `d`).
    Entry,
    /// The path and its children, one level down (`c`, `c+`).
    Children,
    /// The path and everything below it (`d`, `d+`).
    Descendants,
}

/// One line of a hoard profile: hoard `path` (and what `depth` reaches) at `priority`.
///
/// The fields are public; an entry built by hand should come from [`HoardEntry::new`] (or hold
/// to its rules) so that it formats to a line that parses back to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoardEntry {
    /// A normalised absolute path (see [`normalize_path`]).
    pub path: String,
    /// From 1 to [`MAX_PRIORITY`].
    pub priority: u16,
    pub depth: Depth,
    /// Also children or descendants created later (`c+`, `d+`); only with a depth.
    pub future: bool,
}

impl HoardEntry {
    /// A checked entry, its path normalised: what `hoard add` builds from its arguments.
    pub fn new(path: &str, priority: u16, depth: Depth, future: bool) -> Result<Self, EntryError> {
        let path = normalize_path(path).map_err(|reason| EntryError::BadPath { path: path.into(), reason })?;
        if !(1..=MAX_PRIORITY).contains(&priority) {
            return Err(EntryError::BadPriority(priority));
        }
        if future && depth == Depth::Entry {
            return Err(EntryError::FutureWithoutDepth);
        }
        Ok(Self { path, priority, depth, future })
    }
}

/// Why a path cannot be hoarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not an absolute path (it must start with /)")]
    Relative,
    #[error("it has a . or .. component")]
    DotComponent,
    #[error("it contains a control character")]
    ControlChar,
    #[error("it is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
}

/// Why [`HoardEntry::new`] refused an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: PathError },
    #[error("bad priority {0}: it must be from 1 to {MAX_PRIORITY}")]
    BadPriority(u16),
    #[error("future children or descendants (+) need a depth (children or descendants)")]
    FutureWithoutDepth,
}

/// The canonical form of a path an entry may name: absolute, `//` collapsed, no trailing `/`
/// (except for the root), no `.` or `..` component, no control character, at most
/// [`MAX_PATH_LEN`] bytes.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    let path = lenient_normalize(path)?;
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(path.into_owned())
}

/// The path in canonical form, borrowed when it already is: what lookups use, so they accept
/// any name the namespace may hold (control characters, any length).
pub(crate) fn lenient_normalize(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::Relative);
    };
    let mut canonical = true;
    for component in rest.split('/') {
        match component {
            "." | ".." => return Err(PathError::DotComponent),
            "" => canonical &= rest.is_empty(),
            _ => {}
        }
    }
    if canonical {
        return Ok(path.into());
    }
    let mut out = String::with_capacity(path.len());
    for component in rest.split('/').filter(|c| !c.is_empty()) {
        out.push('/');
        out.push_str(component);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out.into())
}

/// The directory holding `path` (a canonical path other than the root).
pub(crate) fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `dir` joined with a child's name.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") }
}
