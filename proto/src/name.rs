//! Validated directory-entry names.
//!
//! Every name that arrives from the network or from a user is checked once, here, and carried as
//! a [`Name`] afterwards, so no code below this point can see `/`, NUL, `.`, `..` or an oversized
//! name.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest name, in bytes, as on most local file systems.
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name {0:?} is reserved")]
    Reserved(String),
    #[error("name contains '/'")]
    Slash,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
}

/// A single path component that is safe to store in a directory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        validate(&s)?;
        Ok(Name(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks a name without taking ownership.
pub fn validate(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s == "." || s == ".." {
        return Err(NameError::Reserved(s.to_string()));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(s.len()));
    }
    if s.contains('/') {
        return Err(NameError::Slash);
    }
    if s.contains('\0') {
        return Err(NameError::Nul);
    }
    Ok(())
}

thread_local! {
    /// postcard drops the text of custom decode errors; the decoder reads the reason back from
    /// here (decoding is synchronous, so the same thread) to give a precise error.
    static LAST_REJECTED: std::cell::RefCell<Option<NameError>> = const { std::cell::RefCell::new(None) };
}

/// The reason the last name decoded on this thread was rejected, if any.
pub fn take_last_rejection() -> Option<NameError> {
    LAST_REJECTED.with(|l| l.borrow_mut().take())
}

impl<'de> Deserialize<'de> for Name {
    /// Names are validated while decoding: a hostile peer cannot smuggle one in.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(|e| {
            let msg = e.to_string();
            LAST_REJECTED.with(|l| *l.borrow_mut() = Some(e));
            serde::de::Error::custom(msg)
        })
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("."), Err(NameError::Reserved(".".into())));
        assert_eq!(Name::new(".."), Err(NameError::Reserved("..".into())));
        assert_eq!(Name::new("a/b"), Err(NameError::Slash));
        assert_eq!(Name::new("a\0b"), Err(NameError::Nul));
        assert_eq!(Name::new("x".repeat(256)), Err(NameError::TooLong(256)));
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "...", ".hidden", "x".repeat(255).as_str(), "naïve café", "a b"] {
            assert_eq!(Name::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn decoding_validates() {
        let bytes = postcard::to_stdvec(&"a/b".to_string()).unwrap();
        assert!(postcard::from_bytes::<Name>(&bytes).is_err());
        let bytes = postcard::to_stdvec(&"ok".to_string()).unwrap();
        assert_eq!(postcard::from_bytes::<Name>(&bytes).unwrap().as_str(), "ok");
    }
}
