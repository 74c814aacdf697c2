//! Finding a running venus: from a path inside its mount (via the kernel's mount table) or from
//! the cache directory. The mount's source is `venus:<cache dir>`, so the table says it all.
//! Its type is `fuse.venus`, or plain `fuse` when venus mounted with mount(2) itself because
//! fusermount3 was not found.

use std::path::{Path, PathBuf};

/// A venus mount: where it is mounted and its cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub cache: PathBuf,
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(n) = std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|t| u8::from_str_radix(t, 8).ok())
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mountpoint = left.split(' ').nth(4);
        let mut r = right.split(' ');
        let (fstype, source) = (r.next(), r.next());
        if let (Some(mp), Some(fstype), Some(source)) = (mountpoint, fstype, source)
            && (fstype == "fuse.venus" || fstype == "fuse")
            && let Some(cache) = unescape(source).strip_prefix("venus:")
        {
            out.push(MountInfo { mountpoint: PathBuf::from(unescape(mp)), cache: PathBuf::from(cache) });
        }
    }
    out
}

pub fn venus_mounts() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// The venus mount containing `path` (the innermost, if several nest).
pub fn mount_of(path: &Path) -> Option<MountInfo> {
    venus_mounts()
        .into_iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_venus_mounts() {
        let text = "36 35 98:0 / /mnt/afs\\040x rw,noatime master:1 - fuse.venus venus:/var/cache/venus rw\n\
                    37 35 98:0 / /proc rw - proc proc rw\n\
                    38 35 0:45 / /afs rw,nosuid,nodev - fuse venus:/var/cache/v2 rw,user_id=0\n\
                    39 35 0:46 / /mnt/other rw - fuse sshfs#host: rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(
            m,
            vec![
                MountInfo { mountpoint: "/mnt/afs x".into(), cache: "/var/cache/venus".into() },
                // Mounted with mount(2), without fusermount3: the type has no subtype.
                MountInfo { mountpoint: "/afs".into(), cache: "/var/cache/v2".into() },
            ]
        );
    }
}
