//! Hoarding: what must be on the laptop before it goes offline.
//!
//! A pure library, with no file system, network or clock: venus reads the profile files, keeps
//! the database, walks its cache and persists what it likes; this crate says what the text
//! means, which entry covers a path and with what priority, and what a hoard walk must cover.
//!
//! # Profiles (`parse`)
//!
//! Coda's format, one command per line:
//!
//! ```text
//! # my hoard profile
//! a /afs/example.org/proj 100:d+
//! a /afs/example.org/tools
//! a "/afs/example.org/my dir" c:50
//! d /afs/example.org/old
//! c
//! l
//! ```
//!
//! - `a PATH [ATTRS]` adds an entry, replacing the one for the same path. ATTRS are
//!   `:`-separated fields in any order: a priority from 1 to [`MAX_PRIORITY`] (default
//!   [`DEFAULT_PRIORITY`]) and at most one depth: `c` (the children), `d` (all descendants),
//!   with `+` for future ones too (`c+`, `d+`).
//! - `d PATH` deletes the entry for PATH (an error when there is none, see [`HoardDb::apply`]).
//! - `c` clears every entry; `l` lists them (kept as [`Command::List`] for a caller to print).
//! - `add`, `delete`, `clear` and `list` are accepted as long forms, as Coda's `hoard` does.
//! - A `#` line is a comment; blank lines and surrounding whitespace are ignored.
//! - PATH is absolute; it is normalised (`//` collapsed, a trailing `/` dropped) and refused
//!   when it has a `.` or `..` component, a control character (NUL included), or more than
//!   [`MAX_PATH_LEN`] bytes. A path with whitespace is written in double quotes, where `\"` and
//!   `\\` are the only escapes; outside quotes every character stands for itself.
//! - Limits: a line of at most [`MAX_LINE_LEN`] bytes, a profile of at most
//!   [`MAX_PROFILE_LEN`] bytes. Any input gives commands or a [`ProfileError`] naming the file
//!   (the caller's label) and the line; never a panic. Parsing is all or nothing.
//!
//! [`format_entry`] writes an entry back as a line that parses to the same entry, quoting when
//! needed; [`HoardDb::to_profile`] writes a whole database.
//!
//! # The database (`HoardDb`)
//!
//! The entries in effect, one per normalised path. Profiles are applied in order and all or
//! nothing: [`parse_lines`] keeps each command's line number so that [`HoardDb::apply`] can name
//! the line of a `d` with nothing to delete, and [`load_profiles`] builds a database from
//! several files (a failure anywhere loads nothing). [`HoardDb::priority_of`] answers the cache's
//! question "how much does the user want this path?": the highest priority among the entry for
//! the path itself, its parent's entry when that has depth `c`, and any ancestor's entry with
//! depth `d`. The database serialises (serde) as the list of its entries.
//!
//! # The walk planner (`plan`)
//!
//! [`plan`] expands the entries against a [`Namespace`] (venus's view of the tree, a fake in
//! tests) into the paths a hoard walk must fetch: highest priority first, each path once with
//! the highest priority that covers it (the same answer [`HoardDb::priority_of`] gives, which a
//! property test checks). Entries are expanded from the highest priority down, subtrees breadth
//! first, so when the plan reaches its `max_items` bound what is cut is the least wanted; no
//! directory is listed twice by descendant expansion. Paths the namespace cannot resolve are
//! reported in [`Plan::missing`] for the caller to report.
//!
//! The `+` (future) flag is kept and round-tripped, but the planner expands what the namespace
//! holds at walk time for `c` and `c+` alike (and `d`, `d+`): freezing the set of children at
//! the time of `hoard add`, as Coda does without `+`, needs the cache's memory of that moment,
//! which is venus's to keep.

mod db;
mod entry;
mod error;
mod parse;
mod plan;

#[cfg(test)]
mod tests;

pub use db::{HoardDb, load_profiles};
pub use entry::{
    DEFAULT_PRIORITY, Depth, EntryError, HoardEntry, MAX_PATH_LEN, MAX_PRIORITY, PathError, normalize_path,
};
pub use error::{ProfileError, ProfileErrorKind};
pub use parse::{Command, MAX_LINE_LEN, MAX_PROFILE_LEN, format_entry, parse, parse_lines};
pub use plan::{Namespace, Plan, PlanItem, plan};
