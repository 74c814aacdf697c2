//! The hoard database: the entries in effect, and the priority they give each path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::entry::{lenient_normalize, parent_of};
use crate::{Command, Depth, HoardEntry, ProfileError, ProfileErrorKind, format_entry, parse_lines};

/// The set of entries in effect (what venus keeps), keyed by path. Serialises as the list of
/// its entries, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<HoardEntry>", into = "Vec<HoardEntry>")]
pub struct HoardDb {
    entries: BTreeMap<String, HoardEntry>,
}

impl HoardDb {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies commands in order, as [`parse_lines`] gives them (each with its line number),
    /// all or nothing: a `d` of a path with no entry at that point (after the commands before
    /// it) fails the whole batch with an error naming `label` and the `d`'s line, and leaves
    /// the database as it was.
    pub fn apply(&mut self, label: &str, commands: &[(usize, Command)]) -> Result<(), ProfileError> {
        let mut next = self.clone();
        next.apply_in_place(label, commands)?;
        *self = next;
        Ok(())
    }

    /// [`HoardDb::apply`] without the all-or-nothing copy: on error, part of the batch is applied.
    fn apply_in_place(&mut self, label: &str, commands: &[(usize, Command)]) -> Result<(), ProfileError> {
        for (line, command) in commands {
            match command {
                Command::Add(e) => self.add(e.clone()),
                Command::Delete(path) => {
                    if !self.remove(path) {
                        return Err(ProfileError::at(label, *line, ProfileErrorKind::NoSuchEntry(path.clone())));
                    }
                }
                Command::Clear => self.clear(),
                Command::List => {}
            }
        }
        Ok(())
    }

    /// Adds the entry, replacing the one for the same path. The entry should keep the rules of
    /// [`HoardEntry::new`].
    pub fn add(&mut self, e: HoardEntry) {
        self.entries.insert(e.path.clone(), e);
    }

    /// Removes the entry for `path` (normalised), telling whether there was one.
    pub fn remove(&mut self, path: &str) -> bool {
        self.entries.remove(path).is_some()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The entry for `path` (normalised), if any.
    pub fn get(&self, path: &str) -> Option<&HoardEntry> {
        self.entries.get(path)
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = &HoardEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hoard priority that covers `path` (an absolute path inside the namespace), if any:
    /// the entry itself, or an ancestor entry whose depth reaches it (Children: exactly one level
    /// below; Descendants: any depth). With several covering entries, the highest priority wins.
    /// A path that is not absolute, or has a `.` or `..` component, is covered by nothing.
    pub fn priority_of(&self, path: &str) -> Option<u16> {
        if self.entries.is_empty() {
            return None;
        }
        let path = lenient_normalize(path).ok()?;
        let mut best = self.entries.get(path.as_ref()).map(|e| e.priority);
        let mut current = path.as_ref();
        let mut levels = 0;
        while current != "/" {
            current = parent_of(current);
            levels += 1;
            if let Some(e) = self.entries.get(current) {
                let reaches = match e.depth {
                    Depth::Entry => false,
                    Depth::Children => levels == 1,
                    Depth::Descendants => true,
                };
                if reaches {
                    best = best.max(Some(e.priority));
                }
            }
        }
        best
    }

    /// The whole database as a profile: one `a` line per entry, sorted by path (empty when
    /// there are no entries). Parsing and applying it to an empty database gives this one back.
    pub fn to_profile(&self) -> String {
        self.entries().map(|e| format_entry(e) + "\n").collect()
    }
}

impl From<Vec<HoardEntry>> for HoardDb {
    fn from(entries: Vec<HoardEntry>) -> Self {
        Self { entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect() }
    }
}

impl From<HoardDb> for Vec<HoardEntry> {
    fn from(db: HoardDb) -> Self {
        db.entries.into_values().collect()
    }
}

/// Several profile files (e.g. every *.hoard in a directory, sorted by file name), each a
/// `(label, text)`, applied in order to an empty database, all or nothing: the first error
/// (with its file label and line) fails the whole load.
pub fn load_profiles(files: &[(String, String)]) -> Result<HoardDb, ProfileError> {
    let mut db = HoardDb::new();
    for (label, text) in files {
        db.apply_in_place(label, &parse_lines(text, label)?)?;
    }
    Ok(db)
}
