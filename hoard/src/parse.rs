//! The profile text: parsing it into commands, and formatting entries back into it.

use crate::error::snippet;
use crate::{DEFAULT_PRIORITY, Depth, HoardEntry, MAX_PRIORITY, ProfileError, ProfileErrorKind, normalize_path};

/// The longest line a profile may hold, in bytes, without its line ending.
pub const MAX_LINE_LEN: usize = 4096;
/// The largest profile, in bytes.
pub const MAX_PROFILE_LEN: usize = 1 << 20;

/// One command of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `a PATH [ATTRS]`: add the entry, replacing any entry for its path.
    Add(HoardEntry),
    /// `d PATH`: delete the entry for this (normalised) path.
    Delete(String),
    /// `c`: delete every entry.
    Clear,
    /// `l`: list the entries (no change to them).
    List,
}

/// Parses a whole profile; all or nothing: on error nothing is returned. `label` names the
/// profile in errors (its file name, say).
pub fn parse(text: &str, label: &str) -> Result<Vec<Command>, ProfileError> {
    Ok(parse_lines(text, label)?.into_iter().map(|(_, command)| command).collect())
}

/// [`parse`], keeping each command's 1-based line number, for [`crate::HoardDb::apply`].
pub fn parse_lines(text: &str, label: &str) -> Result<Vec<(usize, Command)>, ProfileError> {
    if text.len() > MAX_PROFILE_LEN {
        return Err(ProfileError::whole(label, ProfileErrorKind::FileTooLarge(text.len())));
    }
    let mut commands = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let parsed =
            if line.len() > MAX_LINE_LEN { Err(ProfileErrorKind::LineTooLong(line.len())) } else { parse_line(line) };
        match parsed {
            Ok(Some(command)) => commands.push((number, command)),
            Ok(None) => {}
            Err(kind) => return Err(ProfileError::at(label, number, kind)),
        }
    }
    Ok(commands)
}

/// Formats one entry as a profile line (`a PATH PRIORITY[:c|:c+|:d|:d+]`, no line ending),
/// quoting the path when it holds whitespace, `"` or `\`. For an entry that keeps the rules of
/// [`HoardEntry::new`], [`parse`] of the line gives back `Add` of the same entry.
pub fn format_entry(e: &HoardEntry) -> String {
    let depth = match (e.depth, e.future) {
        (Depth::Entry, _) => "",
        (Depth::Children, false) => ":c",
        (Depth::Children, true) => ":c+",
        (Depth::Descendants, false) => ":d",
        (Depth::Descendants, true) => ":d+",
    };
    format!("a {} {}{depth}", quote_path(&e.path), e.priority)
}

fn quote_path(path: &str) -> String {
    if !path.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\') {
        return path.into();
    }
    let mut out = String::with_capacity(path.len() + 2);
    out.push('"');
    for c in path.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One line: a command, nothing (blank or comment), or what is wrong with it.
fn parse_line(line: &str) -> Result<Option<Command>, ProfileErrorKind> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut cursor = Cursor(line);
    let name = cursor.word().unwrap_or_default();
    let command = match name {
        "a" | "add" => {
            let path = cursor.path(name)?;
            let (priority, depth, future) = attributes(cursor.word())?;
            Command::Add(HoardEntry { path, priority, depth, future })
        }
        "d" | "delete" => Command::Delete(cursor.path(name)?),
        "c" | "clear" => Command::Clear,
        "l" | "list" => Command::List,
        _ => return Err(ProfileErrorKind::UnknownCommand(snippet(name))),
    };
    cursor.end()?;
    Ok(Some(command))
}

/// `[PRIORITY][:DEPTH]` in any order: the priority, the depth and the future flag.
fn attributes(token: Option<&str>) -> Result<(u16, Depth, bool), ProfileErrorKind> {
    let mut priority: Option<(u16, &str)> = None;
    let mut depth: Option<(Depth, bool, &str)> = None;
    for field in token.map(|t| t.split(':')).into_iter().flatten() {
        let this_depth = match field {
            "c" => Some((Depth::Children, false)),
            "c+" => Some((Depth::Children, true)),
            "d" => Some((Depth::Descendants, false)),
            "d+" => Some((Depth::Descendants, true)),
            _ => None,
        };
        if let Some((d, future)) = this_depth {
            if let Some((_, _, first)) = depth {
                return Err(ProfileErrorKind::TwoDepths(first.into(), field.into()));
            }
            depth = Some((d, future, field));
        } else if field.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-') {
            if let Some((_, first)) = priority {
                return Err(ProfileErrorKind::DuplicatePriority(snippet(first), snippet(field)));
            }
            priority = Some((parse_priority(field)?, field));
        } else {
            return Err(ProfileErrorKind::UnknownAttribute(snippet(field)));
        }
    }
    let (depth, future) = depth.map_or((Depth::Entry, false), |(d, future, _)| (d, future));
    Ok((priority.map_or(DEFAULT_PRIORITY, |(p, _)| p), depth, future))
}

fn parse_priority(field: &str) -> Result<u16, ProfileErrorKind> {
    let bad = || ProfileErrorKind::BadPriority(snippet(field));
    if !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match field.parse::<u16>() {
        Ok(p) if (1..=MAX_PRIORITY).contains(&p) => Ok(p),
        _ => Err(bad()),
    }
}

/// What is left of a line, read from the left.
struct Cursor<'a>(&'a str);

impl<'a> Cursor<'a> {
    /// The next whitespace-separated word, if any.
    fn word(&mut self) -> Option<&'a str> {
        let rest = self.0.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, rest) = rest.split_at(end);
        self.0 = rest;
        (!word.is_empty()).then_some(word)
    }

    /// The path argument of `command`, quoted or not, normalised.
    fn path(&mut self, command: &str) -> Result<String, ProfileErrorKind> {
        self.0 = self.0.trim_start();
        let raw = if let Some(quoted) = self.0.strip_prefix('"') {
            let (path, rest) = unquote(quoted)?;
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                let garbage = rest.split(char::is_whitespace).next().unwrap_or_default();
                return Err(ProfileErrorKind::TrailingGarbage(snippet(garbage)));
            }
            self.0 = rest;
            path
        } else {
            self.word().ok_or_else(|| ProfileErrorKind::MissingPath(command.into()))?.to_owned()
        };
        normalize_path(&raw).map_err(|reason| ProfileErrorKind::BadPath { path: raw, reason })
    }

    /// Nothing but whitespace may be left.
    fn end(&mut self) -> Result<(), ProfileErrorKind> {
        match self.0.trim() {
            "" => Ok(()),
            rest => Err(ProfileErrorKind::TrailingGarbage(snippet(rest))),
        }
    }
}

/// The text of a quoted path (after its opening quote) and what follows its closing quote.
fn unquote(s: &str) -> Result<(String, &str), ProfileErrorKind> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                Some((_, e)) => return Err(ProfileErrorKind::BadEscape(format!("\\{e}"))),
                None => return Err(ProfileErrorKind::UnterminatedQuote),
            },
            c => out.push(c),
        }
    }
    Err(ProfileErrorKind::UnterminatedQuote)
}
