//! The rules over a small in-memory tree: each refusal, the loop check, renames over a name, and
//! the once-per-operation stamping.

use std::collections::BTreeMap;

use super::*;

const V: VolumeId = VolumeId(3);
const SERVER: ServerId = ServerId(1);
const D1: ObjectId = ObjectId(0x1_0001);
const D2: ObjectId = ObjectId(0x1_0002);
const SUB: ObjectId = ObjectId(0x1_0003);
const F: ObjectId = ObjectId(0x1_0004);
const G: ObjectId = ObjectId(0x1_0005);
const L: ObjectId = ObjectId(0x1_0006);
const NEW: ObjectId = ObjectId(0x2_0000);

/// A tree as plain maps.
#[derive(Default)]
struct Mem {
    nodes: BTreeMap<ObjectId, Node>,
    entries: BTreeMap<(ObjectId, Name), Entry>,
}

impl Tree for Mem {
    type Error = RemoteError;

    fn node(&self, id: ObjectId) -> Result<Option<Node>, RemoteError> {
        Ok(self.nodes.get(&id).cloned())
    }

    fn entry(&self, dir: ObjectId, name: &Name) -> Result<Option<Entry>, RemoteError> {
        Ok(self.entries.get(&(dir, name.clone())).copied())
    }

    fn is_empty(&self, dir: ObjectId) -> Result<bool, RemoteError> {
        Ok(!self.entries.keys().any(|(d, _)| *d == dir))
    }
}

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn fid(o: ObjectId) -> Fid {
    Fid::new(V, o)
}

fn vv(n: u64) -> VersionVector {
    let mut v = VersionVector::new();
    for _ in 0..n {
        v.bump(SERVER);
    }
    v
}

impl Mem {
    fn put(&mut self, dir: ObjectId, name: &str, id: ObjectId, kind: ObjectKind) {
        let node = Node { kind, nlink: 1, parent: Some(dir), version: vv(1), last_op: None };
        self.nodes.insert(id, node);
        self.entries.insert((dir, n(name)), Entry { object: id, kind });
    }

    /// `/d1/sub`, `/d2`, `/d1/f` (also named `/d1/f2`), `/d1/g`, `/d1/l` (a symlink).
    fn sample() -> Mem {
        let mut t = Mem::default();
        let root =
            Node { kind: ObjectKind::Directory, nlink: 4, parent: Some(ObjectId::ROOT), version: vv(1), last_op: None };
        t.nodes.insert(ObjectId::ROOT, root);
        t.put(ObjectId::ROOT, "d1", D1, ObjectKind::Directory);
        t.put(ObjectId::ROOT, "d2", D2, ObjectKind::Directory);
        t.put(D1, "sub", SUB, ObjectKind::Directory);
        t.put(D1, "f", F, ObjectKind::File);
        t.entries.insert((D1, n("f2")), Entry { object: F, kind: ObjectKind::File });
        if let Some(f) = t.nodes.get_mut(&F) {
            f.nlink = 2;
        }
        t.put(D1, "g", G, ObjectKind::File);
        t.put(D1, "l", L, ObjectKind::Symlink);
        t
    }

    fn base(&self, o: ObjectId) -> Base {
        Base::Version(self.nodes[&o].version.clone())
    }

    fn seen(&self, o: ObjectId) -> Seen {
        Seen { object: o, base: self.base(o) }
    }
}

fn create(parent: ObjectId, name: &str, object: ObjectId) -> Mutation {
    Mutation::Create { parent: fid(parent), name: n(name), object, mode: 0o100644, owner: 7, group: 8, mtime: ts() }
}

fn mkdir(parent: ObjectId, name: &str) -> Mutation {
    Mutation::MakeDir { parent: fid(parent), name: n(name), object: NEW, mode: 0o755, owner: 7, group: 8, mtime: ts() }
}

fn rename(from: ObjectId, from_name: &str, object: ObjectId, to: ObjectId, to_name: &str) -> Mutation {
    Mutation::Rename {
        from: fid(from),
        from_name: n(from_name),
        object,
        to: fid(to),
        to_name: n(to_name),
        replaced: None,
    }
}

fn rename_over(t: &Mem, from: (ObjectId, &str), object: ObjectId, to: (ObjectId, &str), victim: ObjectId) -> Mutation {
    Mutation::Rename {
        from: fid(from.0),
        from_name: n(from.1),
        object,
        to: fid(to.0),
        to_name: n(to.1),
        replaced: Some(t.seen(victim)),
    }
}

fn ts() -> Timestamp {
    Timestamp { secs: 100, nanos: 0 }
}

fn refusal(t: &Mem, m: Mutation) -> RemoteError {
    match check(t, &m) {
        Ok(plan) => panic!("{m:?} certified: {plan:?}"),
        Err(e) => e,
    }
}

fn touch_of(plan: &Plan, o: ObjectId) -> &Touch {
    plan.touched.iter().find(|t| t.object == o).unwrap()
}

#[test]
fn create_adds_the_entry_and_reports_the_new_object_first() {
    let t = Mem::sample();
    let plan = check(&t, &create(D2, "x", NEW)).unwrap();
    let new = plan.created.clone().unwrap();
    assert_eq!((new.object, new.parent, new.kind), (NEW, D2, ObjectKind::File));
    assert_eq!(plan.linked, vec![Dirent { dir: D2, name: n("x"), object: NEW, kind: ObjectKind::File }]);
    assert!(plan.unlinked.is_empty() && plan.deleted.is_empty());
    assert_eq!(plan.touched.iter().map(|t| t.object).collect::<Vec<_>>(), vec![NEW, D2]);
    assert!(!plan.touched[0].changes, "a new object is reported in its first state");
    let dir = &plan.touched[1];
    assert!(dir.stamp && dir.listing && dir.changes);
    assert_eq!((dir.entries, dir.links), (1, 0));

    let attr = new.attr(V, ts(), VersionVector::first(SERVER));
    assert_eq!((attr.mode, attr.nlink, attr.parent, attr.owner), (0o644, 1, Some(D2), 7));
}

#[test]
fn a_new_directory_links_its_parent_and_starts_with_two_links() {
    let t = Mem::sample();
    let plan = check(&t, &mkdir(D2, "x")).unwrap();
    assert_eq!(touch_of(&plan, D2).links, 1);
    assert_eq!(plan.created.unwrap().attr(V, ts(), VersionVector::new()).nlink, 2);
}

#[test]
fn creation_refusals() {
    let t = Mem::sample();
    assert_eq!(refusal(&t, create(D1, "g", NEW)), RemoteError::Conflict(ConflictKind::NameTaken { existing: G }));
    assert!(matches!(refusal(&t, create(D1, "y", ObjectId(5))), RemoteError::Invalid(_)));
    assert_eq!(refusal(&t, create(D1, "y", G)), RemoteError::DuplicateObject);
    assert_eq!(refusal(&t, create(ObjectId(0x9_9999), "y", NEW)), RemoteError::Conflict(ConflictKind::ParentGone));
    assert_eq!(refusal(&t, create(G, "y", NEW)), RemoteError::NotDirectory);
    let symlink = |target: &str| Mutation::Symlink {
        parent: fid(D1),
        name: n("s"),
        object: NEW,
        target: target.into(),
        owner: 0,
        group: 0,
        mtime: ts(),
    };
    assert!(matches!(refusal(&t, symlink("")), RemoteError::Invalid(_)));
    assert!(matches!(refusal(&t, symlink("a\0b")), RemoteError::Invalid(_)));
    assert!(matches!(refusal(&t, symlink(&"x".repeat(MAX_LINK_LEN + 1))), RemoteError::Invalid(_)));
    assert_eq!(check(&t, &symlink("f")).unwrap().created.unwrap().mode, 0o777);
    let mount = |target: &str| Mutation::MakeMountPoint {
        parent: fid(D1),
        name: n("m"),
        object: NEW,
        target: target.into(),
        owner: 0,
        mtime: ts(),
    };
    for bad in ["nope", "#", "#Bad Cell:vol", "#.hidden", "#a b"] {
        assert!(matches!(refusal(&t, mount(bad)), RemoteError::Invalid(_)), "{bad}");
    }
    for good in ["#vol", "%vol.", "#example.org:user.alice", "#vol.backup"] {
        check(&t, &mount(good)).unwrap();
    }
}

#[test]
fn stores_and_setattrs_certify_on_their_base() {
    let mut t = Mem::sample();
    let store = |base: Base| Mutation::Store { fid: fid(G), base, chunks: vec![], mtime: ts() };
    let plan = check(&t, &store(t.base(G))).unwrap();
    assert_eq!(plan.touched.len(), 1);
    assert!(plan.touched[0].stamp && !plan.touched[0].listing);
    assert_eq!(
        refusal(&t, store(Base::Version(vv(5)))),
        RemoteError::Conflict(ConflictKind::VersionChanged { current: vv(1) })
    );
    // Offline chains name the op they follow.
    let op = OpId(42);
    assert!(matches!(refusal(&t, store(Base::AfterOp(op))), RemoteError::Conflict(_)));
    if let Some(g) = t.nodes.get_mut(&G) {
        g.last_op = Some(op);
    }
    check(&t, &store(Base::AfterOp(op))).unwrap();

    assert_eq!(
        refusal(&t, Mutation::Store { fid: fid(D1), base: t.base(D1), chunks: vec![], mtime: ts() }),
        RemoteError::IsDirectory
    );
    let of_link = Mutation::Store { fid: fid(L), base: t.base(L), chunks: vec![], mtime: ts() };
    assert!(matches!(refusal(&t, of_link), RemoteError::Invalid(_)));
    let gone = Mutation::SetAttr { fid: fid(NEW), base: Base::Version(vv(1)), set: SetAttrs::default() };
    assert_eq!(refusal(&t, gone), RemoteError::Conflict(ConflictKind::ObjectGone));
}

#[test]
fn a_cache_that_cannot_know_bases_leaves_them_to_the_server() {
    struct Cache(Mem);
    impl Tree for Cache {
        type Error = RemoteError;
        fn node(&self, id: ObjectId) -> Result<Option<Node>, RemoteError> {
            self.0.node(id)
        }
        fn entry(&self, dir: ObjectId, name: &Name) -> Result<Option<Entry>, RemoteError> {
            self.0.entry(dir, name)
        }
        fn is_empty(&self, dir: ObjectId) -> Result<bool, RemoteError> {
            self.0.is_empty(dir)
        }
        fn certifies(&self, _: &Node, _: &Base) -> bool {
            true
        }
    }
    let t = Cache(Mem::sample());
    check(&t, &Mutation::Store { fid: fid(G), base: Base::AfterOp(OpId(1)), chunks: vec![], mtime: ts() }).unwrap();
}

#[test]
fn links_stay_in_one_directory() {
    let t = Mem::sample();
    let link =
        |parent: ObjectId, name: &str, target: ObjectId| Mutation::Link { parent: fid(parent), name: n(name), target };
    let plan = check(&t, &link(D1, "g2", G)).unwrap();
    assert_eq!(
        plan.touched.iter().map(|t| (t.object, t.links, t.stamp)).collect::<Vec<_>>(),
        vec![(G, 1, false), (D1, 0, true)]
    );
    assert_eq!(refusal(&t, link(D2, "g2", G)), RemoteError::CrossDirectoryLink);
    assert!(matches!(refusal(&t, link(D1, "s2", SUB)), RemoteError::Invalid(_)));
    assert_eq!(refusal(&t, link(D1, "f", G)), RemoteError::Conflict(ConflictKind::NameTaken { existing: F }));
    assert_eq!(refusal(&t, link(D1, "x", NEW)), RemoteError::Conflict(ConflictKind::ObjectGone));
}

#[test]
fn removing_a_name() {
    let t = Mem::sample();
    let remove = |name: &str, seen: Seen| Mutation::Remove { parent: fid(D1), name: n(name), seen };
    // The last name: the file goes.
    let plan = check(&t, &remove("g", t.seen(G))).unwrap();
    assert_eq!(plan.deleted, vec![G]);
    assert_eq!(plan.touched.iter().map(|t| t.object).collect::<Vec<_>>(), vec![D1]);
    assert_eq!(touch_of(&plan, D1).entries, -1);
    // Another name remains: the file loses a link and keeps its version.
    let plan = check(&t, &remove("f2", t.seen(F))).unwrap();
    assert!(plan.deleted.is_empty());
    let f = touch_of(&plan, F);
    assert_eq!((f.links, f.stamp, f.changes), (-1, false, true));

    assert_eq!(refusal(&t, remove("nope", t.seen(G))), RemoteError::NotFound);
    assert_eq!(refusal(&t, remove("g", t.seen(F))), RemoteError::Conflict(ConflictKind::NameChanged));
    assert_eq!(refusal(&t, remove("sub", t.seen(SUB))), RemoteError::IsDirectory);
    let stale = Seen { object: G, base: Base::Version(vv(9)) };
    assert!(matches!(refusal(&t, remove("g", stale)), RemoteError::Conflict(ConflictKind::VersionChanged { .. })));
}

#[test]
fn removing_a_directory() {
    let mut t = Mem::sample();
    let rmdir = |parent: ObjectId, name: &str, object: ObjectId| Mutation::RemoveDir {
        parent: fid(parent),
        name: n(name),
        object,
    };
    let plan = check(&t, &rmdir(D1, "sub", SUB)).unwrap();
    assert_eq!(plan.deleted, vec![SUB]);
    let d1 = touch_of(&plan, D1);
    assert_eq!((d1.entries, d1.links), (-1, -1));
    assert_eq!(refusal(&t, rmdir(D1, "g", G)), RemoteError::NotDirectory);
    assert_eq!(refusal(&t, rmdir(ObjectId::ROOT, "d1", D1)), RemoteError::Conflict(ConflictKind::DirectoryNotEmpty));
    assert_eq!(refusal(&t, rmdir(ObjectId::ROOT, "d1", D2)), RemoteError::Conflict(ConflictKind::NameChanged));
    t.nodes.remove(&D1);
    assert_eq!(refusal(&t, rmdir(D1, "sub", SUB)), RemoteError::Conflict(ConflictKind::ParentGone));
}

#[test]
fn a_directory_cannot_move_into_or_below_itself() {
    let t = Mem::sample();
    assert_eq!(refusal(&t, rename(ObjectId::ROOT, "d1", D1, D1, "x")), RemoteError::WouldLoop);
    assert_eq!(refusal(&t, rename(ObjectId::ROOT, "d1", D1, SUB, "x")), RemoteError::WouldLoop);
    // A file may go anywhere; a directory anywhere else.
    check(&t, &rename(D1, "g", G, SUB, "g")).unwrap();
    check(&t, &rename(D1, "sub", SUB, D2, "sub")).unwrap();
}

#[test]
fn the_walk_up_needs_every_directory_on_the_way() {
    let mut t = Mem::sample();
    t.nodes.remove(&D1);
    assert_eq!(
        refusal(&t, rename(ObjectId::ROOT, "d2", D2, SUB, "x")),
        RemoteError::Conflict(ConflictKind::ParentGone)
    );
    let mut t = Mem::sample();
    // d2 → d1 → d2: the walk from d2 reaches neither the root nor the directory moving.
    t.nodes.get_mut(&D2).unwrap().parent = Some(D1);
    t.nodes.get_mut(&D1).unwrap().parent = Some(D2);
    assert_eq!(refusal(&t, rename(D1, "sub", SUB, D2, "x")), RemoteError::Internal(Cycle.to_string()));
}

#[test]
fn moving_a_directory_carries_its_link() {
    let t = Mem::sample();
    let plan = check(&t, &rename(D1, "sub", SUB, D2, "s")).unwrap();
    assert_eq!(plan.touched.iter().map(|t| t.object).collect::<Vec<_>>(), vec![SUB, D1, D2]);
    let sub = touch_of(&plan, SUB);
    assert_eq!((sub.parent, sub.stamp, sub.changes), (Some(D2), false, true), "a move stamps no version");
    assert_eq!((touch_of(&plan, D1).links, touch_of(&plan, D2).links), (-1, 1));
    assert_eq!(plan.unlinked, vec![Dirent { dir: D1, name: n("sub"), object: SUB, kind: ObjectKind::Directory }]);
    assert_eq!(plan.linked, vec![Dirent { dir: D2, name: n("s"), object: SUB, kind: ObjectKind::Directory }]);
}

#[test]
fn renaming_over_a_name() {
    let t = Mem::sample();
    // Without having seen what is there: a conflict.
    assert_eq!(
        refusal(&t, rename(D1, "g", G, D1, "l")),
        RemoteError::Conflict(ConflictKind::NameTaken { existing: L })
    );
    // Having seen it: it goes, and the directory is stamped once for its three entry changes.
    let plan = check(&t, &rename_over(&t, (D1, "g"), G, (D1, "l"), L)).unwrap();
    assert_eq!(plan.deleted, vec![L]);
    assert_eq!(plan.unlinked.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["l", "g"]);
    assert_eq!(plan.linked.iter().map(|e| (e.name.as_str(), e.object)).collect::<Vec<_>>(), [("l", G)]);
    assert_eq!(plan.touched.iter().map(|t| t.object).collect::<Vec<_>>(), vec![G, D1]);
    let d1 = touch_of(&plan, D1);
    assert_eq!((d1.entries, d1.links, d1.stamp), (-1, 0, true));
    // A victim with another name survives, one link less, and is reported first.
    let plan = check(&t, &rename_over(&t, (D1, "g"), G, (D1, "f2"), F)).unwrap();
    assert!(plan.deleted.is_empty());
    assert_eq!(plan.touched.iter().map(|t| (t.object, t.links)).collect::<Vec<_>>(), vec![(F, -1), (G, 0), (D1, 0)]);
}

#[test]
fn renaming_over_a_name_refusals() {
    let mut t = Mem::sample();
    t.put(D2, "e", NEW, ObjectKind::Directory);
    t.put(D2, "h", ObjectId(0x2_0001), ObjectKind::File);
    assert_eq!(
        refusal(&t, rename_over(&t, (D1, "sub"), SUB, (D2, "h"), ObjectId(0x2_0001))),
        RemoteError::NotDirectory
    );
    assert_eq!(refusal(&t, rename_over(&t, (D1, "g"), G, (D2, "e"), NEW)), RemoteError::IsDirectory);
    // An empty directory may be replaced by another; a full one may not.
    let plan = check(&t, &rename_over(&t, (D1, "sub"), SUB, (D2, "e"), NEW)).unwrap();
    assert_eq!(plan.deleted, vec![NEW]);
    assert_eq!(touch_of(&plan, D2).links, 0, "one subdirectory goes, one comes");
    let full = rename_over(&t, (D2, "e"), NEW, (ObjectId::ROOT, "d1"), D1);
    assert_eq!(refusal(&t, full), RemoteError::Conflict(ConflictKind::DirectoryNotEmpty));
    // What the client saw there has changed since.
    let mut stale = rename_over(&t, (D1, "g"), G, (D2, "h"), ObjectId(0x2_0001));
    if let Mutation::Rename { replaced: Some(seen), .. } = &mut stale {
        seen.base = Base::Version(vv(7));
    }
    assert!(matches!(refusal(&t, stale), RemoteError::Conflict(ConflictKind::VersionChanged { .. })));
}

#[test]
fn renames_that_do_nothing_change_nothing() {
    let t = Mem::sample();
    for m in [rename(D1, "g", G, D1, "g"), rename(D1, "f", F, D1, "f2")] {
        let plan = check(&t, &m).unwrap();
        assert_eq!(plan.touched, vec![Touch::new(D1)], "{m:?}");
        assert!(plan.linked.is_empty() && plan.unlinked.is_empty() && plan.deleted.is_empty());
    }
}

#[test]
fn rename_refusals() {
    let t = Mem::sample();
    assert_eq!(refusal(&t, rename(D1, "nope", G, D2, "x")), RemoteError::NotFound);
    assert_eq!(refusal(&t, rename(D1, "g", F, D2, "x")), RemoteError::Conflict(ConflictKind::NameChanged));
    let mut other = rename(D1, "g", G, D2, "x");
    if let Mutation::Rename { to, .. } = &mut other {
        to.volume = VolumeId(4);
    }
    assert_eq!(refusal(&t, other), RemoteError::CrossVolume);
    assert_eq!(refusal(&t, rename(D1, "g", G, G, "x")), RemoteError::NotDirectory);
    // A file with two names moves only within its directory.
    assert_eq!(refusal(&t, rename(D1, "f", F, D2, "f")), RemoteError::CrossDirectoryLink);
    check(&t, &rename(D1, "f", F, D1, "f3")).unwrap();
}

#[test]
fn restamped_names_exactly_what_a_plan_stamps_of_what_existed() {
    let t = Mem::sample();
    let link = Mutation::Link { parent: fid(D1), name: n("h"), target: G };
    let remove = Mutation::Remove { parent: fid(D1), name: n("f2"), seen: t.seen(F) };
    let cases = [
        create(D2, "x", NEW),
        mkdir(D1, "y"),
        link,
        remove,
        rename(D1, "g", G, D2, "g"),
        rename(D1, "g", G, D1, "h"),
        rename_over(&t, (D1, "g"), G, (D1, "l"), L),
    ];
    for m in cases {
        let plan = check(&t, &m).unwrap();
        let created = plan.created.as_ref().map(|c| c.object);
        let mut stamped: Vec<ObjectId> =
            plan.touched.iter().filter(|t| t.stamp && Some(t.object) != created).map(|t| t.object).collect();
        stamped.sort();
        let mut named: Vec<ObjectId> = restamped(&m).into_iter().flatten().collect();
        named.sort();
        assert_eq!(stamped, named, "{m:?}");
    }
}

#[test]
fn an_operation_stamps_each_object_once() {
    let t = Mem::sample();
    let plan = check(&t, &rename_over(&t, (D1, "g"), G, (D1, "l"), L)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    assert!(plan.touched.iter().all(|t| seen.insert(t.object)), "each object is touched once");

    let mut version = vv(3);
    let mut last = None;
    let before = version.clone();
    stamp(&mut version, &mut last, OpId(1), SERVER);
    stamp(&mut version, &mut last, OpId(1), SERVER);
    assert!(version.directly_follows(&before), "{before} -> {version}");
    assert_eq!(last, Some(OpId(1)));
    stamp(&mut version, &mut last, OpId(2), SERVER);
    assert_eq!(version.total(), before.total() + 2);
}

#[test]
fn the_server_asks_its_acls_between_the_phases() {
    let t = Mem::sample();
    // Whatever the names say, a missing directory is found first...
    assert!(locate(&t, &create(ObjectId(0x9_9999), "g", NEW)).is_err());
    // ...and a taken name only when certifying.
    let m = create(D1, "g", NEW);
    let located = locate(&t, &m).unwrap();
    assert!(matches!(certify(&t, located), Err(RemoteError::Conflict(ConflictKind::NameTaken { .. }))));
}

#[test]
fn a_touch_carries_out_on_attributes() {
    let t = Mem::sample();
    let plan = check(&t, &rename(D1, "sub", SUB, D2, "s")).unwrap();
    let mut d1 = New::of(&mkdir(ObjectId::ROOT, "d1")).unwrap().attr(V, Timestamp::default(), vv(1));
    (d1.size, d1.nlink) = (4, 3);
    let now = ts();
    touch_of(&plan, D1).apply(&mut d1, now);
    assert_eq!((d1.size, d1.nlink, d1.mtime, d1.ctime), (3, 2, now, now));
    let mut unchanged = d1.clone();
    Touch::new(D1).apply(&mut unchanged, Timestamp { secs: 999, nanos: 0 });
    assert_eq!(unchanged, d1);
    assert_eq!(Touch { links: -5, ..Touch::new(D1) }.nlink(2), 0);

    let mut a = d1.clone();
    let set = SetAttrs { mode: Some(0o104755), owner: None, group: Some(9), mtime: Some(now) };
    set_attrs(&set, &mut a.mode, &mut a.owner, &mut a.group, &mut a.mtime);
    assert_eq!((a.mode, a.owner, a.group), (0o4755, d1.owner, 9));
}
