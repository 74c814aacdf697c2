//! Who is asking, and what they may do: protection ids, AFS access rights, directory ACLs and
//! the cell's tokens.
//!
//! Ids follow AFS: users are positive, groups negative, and three groups are built in:
//! `system:anyuser` (everyone, also the anonymous), `system:authuser` (anyone with a token) and
//! `system:administrators`. A token is a statement "this is user N of cell C until T", sealed
//! with a keyed blake3 MAC under the cell's token key, which every server of the cell holds; a
//! server checks it without asking anyone.

use serde::{Deserialize, Serialize};

/// A user (positive) or group (negative) of the protection database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PtsId(pub i32);

impl PtsId {
    /// The user every request without a token runs as.
    pub const ANONYMOUS: PtsId = PtsId(32766);
    pub const ANYUSER: PtsId = PtsId(-101);
    pub const AUTHUSER: PtsId = PtsId(-102);
    pub const ADMINISTRATORS: PtsId = PtsId(-204);

    pub fn is_group(self) -> bool {
        self.0 < 0
    }

    /// The owner number stored in attributes (`st_uid` as the server keeps it).
    pub fn as_owner(self) -> u32 {
        self.0.max(0) as u32
    }
}

impl std::fmt::Display for PtsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The names of the built-in entries.
pub const BUILTIN: &[(PtsId, &str)] = &[
    (PtsId::ANONYMOUS, "anonymous"),
    (PtsId::ANYUSER, "system:anyuser"),
    (PtsId::AUTHUSER, "system:authuser"),
    (PtsId::ADMINISTRATORS, "system:administrators"),
];

/// Checks a user name (`alice`) or group name (`alice:friends`, `system:...`).
pub fn validate_pts_name(name: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase())
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    };
    let ok = match name.split_once(':') {
        Some((owner, group)) => part_ok(owner) && part_ok(group),
        None => part_ok(name),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use lowercase letters, digits, '.', '_' or '-', starting with a letter \
             (groups: owner:name)"
        ))
    }
}

/// A set of AFS rights: `r`ead, `l`ookup, `i`nsert, `d`elete, `w`rite, loc`k`, `a`dminister.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const READ: Rights = Rights(1);
    pub const LOOKUP: Rights = Rights(2);
    pub const INSERT: Rights = Rights(4);
    pub const DELETE: Rights = Rights(8);
    pub const WRITE: Rights = Rights(16);
    pub const LOCK: Rights = Rights(32);
    pub const ADMINISTER: Rights = Rights(64);
    pub const ALL: Rights = Rights(127);

    const LETTERS: [(char, Rights); 7] = [
        ('r', Rights::READ),
        ('l', Rights::LOOKUP),
        ('i', Rights::INSERT),
        ('d', Rights::DELETE),
        ('w', Rights::WRITE),
        ('k', Rights::LOCK),
        ('a', Rights::ADMINISTER),
    ];

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// Unknown bits are dropped: a newer peer's rights never widen what this one grants.
    pub fn from_bits(bits: u8) -> Rights {
        Rights(bits & Rights::ALL.0)
    }

    pub fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// `rlidwka` letters in any order, or the AFS words `all`, `read` (rl), `write` (rlidwk),
    /// `none`.
    pub fn parse(s: &str) -> Result<Rights, String> {
        match s {
            "all" => return Ok(Rights::ALL),
            "read" => return Ok(Rights::READ | Rights::LOOKUP),
            "write" => return Ok(Rights::ALL.without(Rights::ADMINISTER)),
            "none" => return Ok(Rights::NONE),
            _ => {}
        }
        let mut r = Rights::NONE;
        for ch in s.chars() {
            match Rights::LETTERS.iter().find(|(l, _)| *l == ch) {
                Some((_, bit)) => r = r | *bit,
                None => return Err(format!("{s:?}: rights are letters of \"rlidwka\", or all, read, write, none")),
            }
        }
        Ok(r)
    }
}

impl std::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for Rights {
    type Output = Rights;
    fn bitand(self, rhs: Rights) -> Rights {
        Rights(self.0 & rhs.0)
    }
}

impl std::fmt::Display for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (l, bit) in Rights::LETTERS {
            if self.contains(bit) {
                write!(f, "{l}")?;
            }
        }
        Ok(())
    }
}

/// What a reply says about access to an object: the caller's rights and the anonymous user's,
/// both on the directory whose ACL governs the object (the object itself for a directory, its
/// parent for anything else). Mode bits are not folded in: the client applies them itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub caller: Rights,
    pub anyuser: Rights,
}

/// What someone may do to a file, given their rights on its directory, the file's mode bits and
/// whether they own it (AFS's rules): the owner's `r` and `w` mode bits bind everyone, except
/// that an owner with `i` on the directory may always read and write their own files (so a file
/// created read-only can still be written through the descriptor that created it).
pub fn file_rights(dir: Rights, mode: u32, is_owner: bool) -> Rights {
    let mut r = dir;
    if mode & 0o400 == 0 {
        r = r.without(Rights::READ);
    }
    if mode & 0o200 == 0 {
        r = r.without(Rights::WRITE);
    }
    if is_owner && dir.contains(Rights::INSERT) {
        r = r | Rights::READ | Rights::WRITE;
    }
    r
}

/// The most entries of each sign an ACL may have (as in AFS).
pub const MAX_ACL_ENTRIES: usize = 20;

/// A directory's access control list: positive entries grant, negative entries take away, and a
/// negative entry wins over any grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub positive: Vec<(PtsId, Rights)>,
    pub negative: Vec<(PtsId, Rights)>,
}

impl Acl {
    /// The ACL of a new volume's root: its administrators may do everything.
    pub fn volume_default() -> Acl {
        Acl { positive: vec![(PtsId::ADMINISTRATORS, Rights::ALL)], negative: vec![] }
    }

    /// The rights of someone whose current protection set (user id and groups) is `cps`.
    pub fn rights(&self, cps: &[PtsId]) -> Rights {
        let sum = |entries: &[(PtsId, Rights)]| {
            entries.iter().filter(|(who, _)| cps.contains(who)).fold(Rights::NONE, |acc, (_, r)| acc | *r)
        };
        sum(&self.positive).without(sum(&self.negative))
    }

    /// Sets (or, with no rights, removes) one entry.
    pub fn set(&mut self, who: PtsId, rights: Rights, negative: bool) -> Result<(), String> {
        let list = if negative { &mut self.negative } else { &mut self.positive };
        list.retain(|(w, _)| *w != who);
        if !rights.is_empty() {
            if list.len() >= MAX_ACL_ENTRIES {
                return Err(format!("an ACL holds at most {MAX_ACL_ENTRIES} entries of each kind"));
            }
            list.push((who, rights));
        }
        Ok(())
    }

    /// Refuses ACLs a well-behaved server never stores (too long, duplicate or empty entries).
    pub fn validate(&self) -> Result<(), String> {
        for list in [&self.positive, &self.negative] {
            if list.len() > MAX_ACL_ENTRIES {
                return Err(format!("an ACL holds at most {MAX_ACL_ENTRIES} entries of each kind"));
            }
            for (i, (who, r)) in list.iter().enumerate() {
                if r.is_empty() || list[..i].iter().any(|(w, _)| w == who) {
                    return Err(format!("ACL entry for {who} is empty or repeated"));
                }
            }
        }
        Ok(())
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBody {
    pub cell: String,
    pub user: PtsId,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub issued: i64,
    pub expires: i64,
    /// The groups the user belonged to when the token was issued: servers that do not hold
    /// the protection database go by these (the database server asks the database).
    pub groups: Vec<PtsId>,
}

/// A sealed [`TokenBody`]: proof, to any server of the cell, of who the bearer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub body: TokenBody,
    pub mac: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token is for cell {0}")]
    WrongCell(String),
    #[error("token was not issued by this cell (bad seal)")]
    Forged,
}

/// The cell's secret that seals tokens. Every server of the cell holds the same key.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn generate() -> TokenKey {
        TokenKey(rand::random())
    }

    pub fn from_hex(s: &str) -> Result<TokenKey, String> {
        let s = s.trim();
        if s.len() != 64 {
            return Err("a token key is 64 hex digits".into());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| "a token key is 64 hex digits")?;
        }
        Ok(TokenKey(key))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn seal(&self, body: &TokenBody) -> blake3::Hash {
        // postcard of a struct of plain fields is canonical: the same body, the same bytes.
        let bytes = postcard::to_stdvec(body).unwrap_or_default();
        blake3::keyed_hash(&self.0, &bytes)
    }

    pub fn issue(&self, body: TokenBody) -> Token {
        let mac = *self.seal(&body).as_bytes();
        Token { body, mac }
    }

    /// Checks the seal (in constant time), the cell and the expiry.
    pub fn verify<'t>(&self, token: &'t Token, cell: &str, now: i64) -> Result<&'t TokenBody, TokenError> {
        if self.seal(&token.body) != blake3::Hash::from(token.mac) {
            return Err(TokenError::Forged);
        }
        if token.body.cell != cell {
            return Err(TokenError::WrongCell(token.body.cell.clone()));
        }
        if token.body.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(&token.body)
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Seconds since the Unix epoch, as tokens count time.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_parse_and_print() {
        assert_eq!(Rights::parse("rl").unwrap().to_string(), "rl");
        assert_eq!(Rights::parse("all").unwrap().to_string(), "rlidwka");
        assert_eq!(Rights::parse("write").unwrap().to_string(), "rlidwk");
        assert_eq!(Rights::parse("alr").unwrap().to_string(), "rla");
        assert!(Rights::parse("rx").is_err());
        assert_eq!(Rights::from_bits(0xff), Rights::ALL);
    }

    #[test]
    fn negative_entries_win_over_group_grants() {
        let alice = PtsId(5);
        let friends = PtsId(-300);
        let mut acl = Acl::default();
        acl.set(friends, Rights::parse("rliw").unwrap(), false).unwrap();
        acl.set(PtsId::ANYUSER, Rights::LOOKUP, false).unwrap();
        acl.set(alice, Rights::WRITE, true).unwrap();
        let cps = [alice, friends, PtsId::ANYUSER, PtsId::AUTHUSER];
        assert_eq!(acl.rights(&cps).to_string(), "rli");
        assert_eq!(acl.rights(&[PtsId::ANONYMOUS, PtsId::ANYUSER]), Rights::LOOKUP);
        acl.set(alice, Rights::NONE, true).unwrap();
        assert_eq!(acl.rights(&cps).to_string(), "rliw");
        assert!(acl.validate().is_ok());
    }

    #[test]
    fn acls_are_bounded() {
        let mut acl = Acl::default();
        for i in 0..MAX_ACL_ENTRIES as i32 {
            acl.set(PtsId(i + 1), Rights::READ, false).unwrap();
        }
        assert!(acl.set(PtsId(999), Rights::READ, false).is_err());
        acl.positive.push((PtsId(1), Rights::READ));
        assert!(acl.validate().is_err());
    }

    #[test]
    fn tokens_are_sealed_bound_to_the_cell_and_expire() {
        let key = TokenKey::generate();
        let body = TokenBody {
            cell: "a.test".into(),
            user: PtsId(7),
            name: "bob".into(),
            issued: 100,
            expires: 200,
            groups: vec![],
        };
        let token = key.issue(body);
        assert_eq!(key.verify(&token, "a.test", 150).unwrap().user, PtsId(7));
        assert_eq!(key.verify(&token, "a.test", 200), Err(TokenError::Expired));
        assert!(matches!(key.verify(&token, "b.test", 150), Err(TokenError::WrongCell(_))));
        let mut forged = token.clone();
        forged.body.user = PtsId(1);
        assert_eq!(key.verify(&forged, "a.test", 150), Err(TokenError::Forged));
        assert_eq!(TokenKey::generate().verify(&token, "a.test", 150), Err(TokenError::Forged));
        let again = TokenKey::from_hex(&key.to_hex()).unwrap();
        assert!(again.verify(&token, "a.test", 150).is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_pts_name("alice").is_ok());
        assert!(validate_pts_name("alice:friends").is_ok());
        for bad in ["", "Alice", "a b", "a:b:c", ":x", "1abc", &"a".repeat(64)] {
            assert!(validate_pts_name(bad).is_err(), "{bad}");
        }
    }
}
