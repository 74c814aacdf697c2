//! What venus records of a conflict: the server refused a change of ours for good, and our
//! version was kept beside the server's (`venus conflicts` lists these; `venus repair` settles
//! them). The cache index keeps them; `fs::conflicts` makes them.

use proto::{Fid, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictInfo {
    pub id: u64,
    pub cell: String,
    pub volume: u64,
    /// What happened, e.g. `update/update`, `update/remove`, `name taken`, `remove/update`.
    pub kind: String,
    /// The server's reason.
    pub detail: String,
    /// The original name and its directory.
    #[serde(with = "fid_text")]
    pub dir: Option<Fid>,
    pub name: Option<String>,
    /// Where the local version was kept, if the change carried data or a new object.
    #[serde(with = "fid_text")]
    pub copy_dir: Option<Fid>,
    pub copy_name: Option<String>,
    #[serde(with = "fid_text")]
    pub copy: Option<Fid>,
    pub local_size: Option<u64>,
    pub at: Timestamp,
    /// A local file holding the local version, when the server refused to keep it anywhere
    /// (no right to write there any more, quota, read-only): in the cache directory, owned by
    /// the user who made the change.
    #[serde(default)]
    pub local_copy: Option<String>,
}

/// Fids as text (`volume.object`, as `venus fid` prints them): 128-bit ids do not fit JSON
/// numbers.
mod fid_text {
    use proto::Fid;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(f: &Option<Fid>, s: S) -> Result<S::Ok, S::Error> {
        f.map(|f| f.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Fid>, D::Error> {
        Option::<String>::deserialize(d)?.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
    }
}

/// `20261122T045959` for a Unix time, in UTC.
pub fn compact_utc(t: Timestamp) -> String {
    let days = t.secs.div_euclid(86_400);
    let secs = t.secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}
