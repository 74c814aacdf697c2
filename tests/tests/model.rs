//! Reference-model test: random sequences of file operations applied to a venus mount and to a
//! local directory must give the same results (success or the same errno) and the same tree
//! (names, kinds, contents, sizes, modes).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use e2e::*;

#[derive(Debug, Clone)]
enum Op {
    Write { path: String, seed: u64, len: usize },
    Append { path: String, seed: u64, len: usize },
    Truncate { path: String, len: u64 },
    Mkdir { path: String },
    Remove { path: String },
    Rmdir { path: String },
    Rename { from: String, to: String },
    Chmod { path: String, mode: u32 },
    Symlink { target: String, path: String },
    Link { from: String, to: String },
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const DIRS: &[&str] = &["", "d", "e", "d/f"];
const NAMES: &[&str] = &["x", "y", "z", "w"];
const SUBDIRS: &[&str] = &["d", "e", "d/f", "e/g", "d/f/h"];

fn path(rng: &mut Rng) -> String {
    let dir = rng.pick(DIRS);
    let name = rng.pick(NAMES);
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

fn dir_path(rng: &mut Rng) -> String {
    rng.pick(SUBDIRS).to_string()
}

fn gen_op(rng: &mut Rng) -> Op {
    match rng.next() % 20 {
        0..=4 => Op::Write { path: path(rng), seed: rng.next(), len: (rng.next() % 5000) as usize },
        5..=6 => Op::Append { path: path(rng), seed: rng.next(), len: (rng.next() % 300) as usize },
        7 => Op::Truncate { path: path(rng), len: rng.next() % 3000 },
        8..=10 => Op::Mkdir { path: if rng.next().is_multiple_of(2) { dir_path(rng) } else { path(rng) } },
        11..=12 => Op::Remove { path: path(rng) },
        13 => Op::Rmdir { path: dir_path(rng) },
        14..=15 => Op::Rename { from: path(rng), to: path(rng) },
        16 => Op::Rename { from: dir_path(rng), to: dir_path(rng) },
        17 => Op::Chmod { path: path(rng), mode: [0o600, 0o644, 0o755, 0o700][(rng.next() % 4) as usize] },
        18 => Op::Symlink { target: path(rng), path: path(rng) },
        _ => Op::Link { from: path(rng), to: path(rng) },
    }
}

/// AFS keeps every name of a file in one directory (one ACL governs it): a hard link into
/// another directory, or moving a file that has several names to another directory, is EXDEV.
fn afs_refuses(root: &Path, op: &Op) -> bool {
    let dir = |s: &str| root.join(s).parent().and_then(|d| fs::canonicalize(d).ok());
    match op {
        Op::Link { from, to } => {
            fs::symlink_metadata(root.join(from)).is_ok_and(|m| m.is_file()) && dir(from) != dir(to)
        }
        Op::Rename { from, to } => {
            use std::os::unix::fs::MetadataExt;
            fs::symlink_metadata(root.join(from)).is_ok_and(|m| m.is_file() && m.nlink() > 1)
                && dir(to).is_some()
                && dir(from) != dir(to)
        }
        _ => false,
    }
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    if afs_refuses(root, op) {
        return Err(libc::EXDEV);
    }
    let p = |s: &str| root.join(s);
    let r = match op {
        Op::Write { path, seed, len } => fs::write(p(path), Noise::bytes(*seed, *len)),
        Op::Append { path, seed, len } => {
            fs::OpenOptions::new().append(true).open(p(path)).and_then(|mut f| f.write_all(&Noise::bytes(*seed, *len)))
        }
        Op::Truncate { path, len } => fs::OpenOptions::new().write(true).open(p(path)).and_then(|f| f.set_len(*len)),
        Op::Mkdir { path } => fs::create_dir(p(path)),
        Op::Remove { path } => fs::remove_file(p(path)),
        Op::Rmdir { path } => fs::remove_dir(p(path)),
        Op::Rename { from, to } => fs::rename(p(from), p(to)),
        Op::Chmod { path, mode } => {
            // Through symlinks, chmod changes the target; keep to real files and directories.
            match fs::symlink_metadata(p(path)) {
                Ok(m) if m.file_type().is_symlink() => Ok(()),
                _ => fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)),
            }
        }
        Op::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path)),
        Op::Link { from, to } => match fs::symlink_metadata(p(from)) {
            // Linking a symlink or a directory differs between systems; skip those.
            Ok(m) if m.is_file() => fs::hard_link(p(from), p(to)),
            _ => Ok(()),
        },
    };
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { content: blake3::Hash, len: u64, mode: u32 },
    Dir { mode: u32 },
    Link { target: String },
}

fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let rel_child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = fs::symlink_metadata(e.path()).expect("metadata");
            let mode = m.permissions().mode() & 0o777;
            let node = if m.file_type().is_symlink() {
                Node::Link { target: fs::read_link(e.path()).expect("readlink").to_string_lossy().into_owned() }
            } else if m.is_dir() {
                stack.push(rel_child.clone());
                Node::Dir { mode }
            } else {
                Node::File { content: hash_file(&e.path()).expect("hash"), len: m.len(), mode }
            };
            out.insert(rel_child, node);
        }
    }
    out
}

#[test]
fn random_operations_match_a_local_directory() -> anyhow::Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("model.test")?;
    let mount = VenusMount::start(&vice, "model.test")?;
    for seed in [1u64, 7, 42, 1000, 31337] {
        let local = tempfile::tempdir()?;
        let remote = mount.path(&format!("run{seed}"));
        fs::create_dir(&remote)?;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for d in ["d", "e", "d/f"] {
            fs::create_dir(local.path().join(d))?;
            fs::create_dir(remote.join(d))?;
        }
        let mut succeeded = 0;
        for step in 0..300 {
            let op = gen_op(&mut rng);
            let want = apply(local.path(), &op);
            let got = apply(&remote, &op);
            assert_eq!(got, want, "seed {seed} step {step}: {op:?} gave {got:?} on venus, {want:?} locally");
            succeeded += usize::from(got.is_ok());
        }
        let tree = snapshot(local.path());
        assert!(
            succeeded > 100 && tree.len() > 5,
            "seed {seed}: the sequence did too little ({succeeded} ok, {} nodes)",
            tree.len()
        );
        assert_eq!(snapshot(&remote), tree, "seed {seed}: trees differ");
    }
    Ok(())
}

#[test]
fn random_operations_offline_reintegrate_to_the_same_tree() -> anyhow::Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("offmodel.test")?;
    let a = VenusMount::start(&vice, "offmodel.test")?;
    let b = VenusMount::start(&vice, "offmodel.test")?;
    for seed in [3u64, 11, 77, 123, 999, 4242] {
        let local = tempfile::tempdir()?;
        let remote = a.path(&format!("off{seed}"));
        fs::create_dir(&remote)?;
        for d in ["d", "e", "d/f"] {
            fs::create_dir(local.path().join(d))?;
            fs::create_dir(remote.join(d))?;
        }
        // Warm the cache: every directory's listing.
        snapshot(&remote);
        a.venus_ok(&["disconnect"]);
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let mut succeeded = 0;
        for step in 0..300 {
            let op = gen_op(&mut rng);
            let want = apply(local.path(), &op);
            let got = apply(&remote, &op);
            assert_eq!(got, want, "seed {seed} step {step} (offline): {op:?} gave {got:?} on venus, {want:?} locally");
            succeeded += usize::from(got.is_ok());
        }
        let tree = snapshot(local.path());
        assert!(succeeded > 60, "seed {seed}: only {succeeded} operations succeeded");
        assert_eq!(snapshot(&remote), tree, "seed {seed}: the offline view differs");
        a.venus_ok(&["reconnect"]);
        a.venus_ok(&["sync"]);
        assert_eq!(a.status()["conflicts"], 0, "seed {seed}: a lone client must not conflict with itself");
        assert_eq!(snapshot(&b.path(&format!("off{seed}"))), tree, "seed {seed}: the reintegrated tree differs");
    }
    Ok(())
}
