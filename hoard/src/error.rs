//! The crate's one error type: what is wrong with a profile, and where.

use std::fmt;

use crate::{MAX_LINE_LEN, MAX_PRIORITY, MAX_PROFILE_LEN, PathError};

/// A profile that cannot be loaded: the file (the label the caller gave), the 1-based line
/// (`None` when the fault is the whole file's) and the reason. Displays as
/// `LABEL:LINE: REASON`, on one line whatever the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    pub label: String,
    pub line: Option<usize>,
    pub kind: ProfileErrorKind,
}

impl ProfileError {
    pub(crate) fn at(label: &str, line: usize, kind: ProfileErrorKind) -> Self {
        Self { label: label.into(), line: Some(line), kind }
    }

    pub(crate) fn whole(label: &str, kind: ProfileErrorKind) -> Self {
        Self { label: label.into(), line: None, kind }
    }
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.label, self.kind),
            None => write!(f, "{}: {}", self.label, self.kind),
        }
    }
}

impl std::error::Error for ProfileError {}

/// What is wrong. Text quoted from the input is shown escaped and, when long, cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileErrorKind {
    #[error("unknown command {0:?} (expected a, d, c, l, or # for a comment)")]
    UnknownCommand(String),
    /// An `a` or `d` with no path; the command's name.
    #[error("missing path after {0:?}")]
    MissingPath(String),
    /// A path that is relative, or otherwise not one an entry may name.
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: PathError },
    /// A priority that is not a whole number from 1 to 1000.
    #[error("bad priority {0:?}: expected a whole number from 1 to {MAX_PRIORITY}")]
    BadPriority(String),
    #[error("unknown attribute {0:?}: expected a priority (1 to {MAX_PRIORITY}), c, c+, d or d+")]
    UnknownAttribute(String),
    /// Two of `c`, `c+`, `d`, `d+`.
    #[error("two depth attributes {0:?} and {1:?}: give at most one of c, c+, d, d+")]
    TwoDepths(String, String),
    #[error("two priorities {0:?} and {1:?}: give at most one")]
    DuplicatePriority(String, String),
    #[error("unexpected {0:?} after the command")]
    TrailingGarbage(String),
    #[error("unterminated quote in path")]
    UnterminatedQuote,
    /// A backslash in a quoted path followed by something other than `"` or `\`.
    #[error("bad escape {0:?} in quoted path: only \\\" and \\\\ are escapes")]
    BadEscape(String),
    /// The line's length in bytes.
    #[error("line of {0} bytes, longer than the limit of {MAX_LINE_LEN}")]
    LineTooLong(usize),
    /// The profile's length in bytes.
    #[error("profile of {0} bytes, larger than the limit of {MAX_PROFILE_LEN}")]
    FileTooLarge(usize),
    /// A `d` of a path that has no entry at that point.
    #[error("no entry for {0:?} to delete")]
    NoSuchEntry(String),
}

/// Input quoted in a message, cut to a readable length (on a character boundary).
pub(crate) fn snippet(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.into(),
    }
}
