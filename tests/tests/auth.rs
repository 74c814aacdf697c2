//! Users, tokens and ACLs end to end: two local users on two venus mounts (and the anonymous
//! user) against one vice, with plain file operations run as those users; and tokens and Fids
//! presented straight to the server.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use e2e::*;
use proto::msg::{Request, Response};
use proto::*;

type R = anyhow::Result<()>;

const ALICE: u32 = 4101;
const BOB: u32 = 4102;
const NOBODY: u32 = 4103;

/// Runs a shell command as local user `uid`.
fn sh(uid: u32, script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).uid(uid).gid(uid).output().expect("run sh")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "expected success: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn denied(out: Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Permission denied"), "expected EACCES, got {out:?}");
}

/// A mount other local users can reach (the harness makes its directories owner-only).
fn shared_mount(vice: &Vice, cell: &str) -> anyhow::Result<VenusMount> {
    let m = VenusMount::start(vice, cell)?;
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(m)
}

fn venus_as(m: &VenusMount, uid: u32, args: &[&str]) -> Output {
    m.as_uid(uid, args).output().expect("run venus")
}

#[test]
fn a_private_directory_keeps_others_out_until_its_acl_lets_them_in() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("acl.test")?;
    vice.create_user("alice", "alice password")?;
    vice.create_user("bob", "bob password")?;
    ok(vice.pts(&["creategroup", "alice:friends"]));
    ok(vice.pts(&["adduser", "bob", "alice:friends"]));
    assert!(ok(vice.pts(&["membership", "alice:friends"])).contains("bob"));
    assert!(ok(vice.pts(&["membership", "bob"])).contains("alice:friends"));
    let entries: serde_json::Value = serde_json::from_str(&ok(vice.pts(&["listentries", "--json"])))?;
    let names: Vec<&str> = entries.as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    for n in ["admin", "alice", "bob", "alice:friends", "system:administrators", "system:anyuser"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!vice.pts(&["createuser", "Bad Name", "--password-file", "/dev/null"]).status.success());
    let a = shared_mount(&vice, "acl.test")?;
    let b = shared_mount(&vice, "acl.test")?;
    a.login(ALICE, "alice", "alice password")?;
    b.login(BOB, "bob", "bob password")?;
    assert!(ok(venus_as(&b, BOB, &["tokens"])).contains("bob"));
    assert!(ok(venus_as(&b, NOBODY, &["tokens"])).contains("anonymous"));

    // A fresh cell's root.cell: everyone reads, administrators write.
    let root_acl = ok(venus_as(&a, NOBODY, &["listacl", &a.path("").display().to_string()]));
    assert!(root_acl.contains("system:administrators rlidwka") && root_acl.contains("system:anyuser rl"), "{root_acl}");
    assert!(root_acl.contains("Your rights: rl"), "{root_acl}");
    denied(sh(NOBODY, &format!("touch {}/anonymous-was-here", a.path("").display())));

    // The administrator (uid 0 on both mounts) makes alice a home only she may use.
    let home = a.path("alice");
    fs::create_dir(&home)?;
    a.venus_ok(&["setacl", &home.display().to_string(), "alice", "all"]);
    a.venus_ok(&["setacl", &home.display().to_string(), "system:anyuser", "none"]);
    a.venus_ok(&["setacl", &home.display().to_string(), "system:administrators", "none"]);
    let h = home.display().to_string();
    ok(sh(ALICE, &format!("echo s3cret > {h}/secret && mkdir {h}/sub && echo deep > {h}/sub/f")));
    let listacl = ok(venus_as(&a, ALICE, &["listacl", &h]));
    assert!(listacl.contains("alice rlidwka") && !listacl.contains("system:anyuser"), "{listacl}");

    // bob (on the other client) and the anonymous user: nothing.
    let hb = b.path("alice").display().to_string();
    for uid in [BOB, NOBODY] {
        denied(sh(uid, &format!("cat {hb}/secret")));
        denied(sh(uid, &format!("ls {hb}")));
        denied(sh(uid, &format!("touch {hb}/intruder")));
        denied(sh(uid, &format!("rm -f {hb}/secret")));
        denied(sh(uid, &format!("echo more >> {hb}/secret")));
        denied(sh(uid, &format!("cat {hb}/sub/f")));
    }
    // Administrators are no exception to r: ACLs bind everyone; they keep l and a (to repair).
    assert!(fs::read(b.path("alice/secret")).is_err());
    assert!(fs::read_dir(b.path("alice")).is_ok());

    // access(2) agrees.
    assert!(!sh(BOB, &format!("test -r {hb}/secret")).status.success());
    // alice lets bob read: the other client sees the change at once (its rights were dropped
    // with the callback), and bob still cannot write.
    ok(venus_as(&a, ALICE, &["setacl", &h, "bob", "rl"]));
    assert_eq!(ok(sh(BOB, &format!("cat {hb}/secret"))), "s3cret\n");
    assert!(ok(sh(BOB, &format!("ls {hb}"))).contains("secret"));
    denied(sh(BOB, &format!("echo more >> {hb}/secret")));
    denied(sh(BOB, &format!("touch {hb}/intruder")));
    denied(sh(NOBODY, &format!("cat {hb}/secret")));
    assert!(sh(BOB, &format!("test -r {hb}/secret")).status.success());
    assert!(!sh(BOB, &format!("test -w {hb}/secret")).status.success());
    // A directory takes its parent's ACL when it is made (AFS): sub/ predates bob's entry,
    // later/ has it.
    denied(sh(BOB, &format!("cat {hb}/sub/f")));
    ok(sh(ALICE, &format!("mkdir {h}/later && echo later > {h}/later/f")));
    assert_eq!(ok(sh(BOB, &format!("cat {hb}/later/f"))), "later\n");

    // A group grant, and a negative entry that beats it.
    ok(venus_as(&a, ALICE, &["setacl", &h, "alice:friends", "rliw"]));
    ok(sh(BOB, &format!("echo from-bob >> {hb}/secret")));
    ok(venus_as(&a, ALICE, &["setacl", &h, "bob", "w", "--negative"]));
    denied(sh(BOB, &format!("echo again >> {hb}/secret")));
    ok(sh(BOB, &format!("echo mine > {hb}/bobs-file")));
    assert_eq!(ok(sh(ALICE, &format!("cat {h}/secret"))), "s3cret\nfrom-bob\n");
    let listacl = ok(venus_as(&a, ALICE, &["listacl", &h]));
    assert!(listacl.contains("Negative rights:") && listacl.contains("bob w"), "{listacl}");

    // Disconnected, venus honours what it knows: bob still reads, still cannot write.
    b.venus_ok(&["disconnect"]);
    assert_eq!(ok(sh(BOB, &format!("cat {hb}/secret"))), "s3cret\nfrom-bob\n");
    denied(sh(BOB, &format!("echo offline >> {hb}/secret")));
    denied(sh(NOBODY, &format!("cat {hb}/secret")));
    b.venus_ok(&["reconnect"]);
    assert_eq!(b.pending(), 0, "nothing refused was logged");

    // Logging out makes bob anonymous again.
    ok(venus_as(&b, BOB, &["logout"]));
    denied(sh(BOB, &format!("cat {hb}/secret")));
    Ok(())
}

#[test]
fn offline_changes_wait_for_their_owners_token_and_other_users_wait_for_the_log() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("owner.test")?;
    vice.create_user("alice", "alice password")?;
    vice.create_user("bob", "bob password")?;
    let a = shared_mount(&vice, "owner.test")?;
    a.login(ALICE, "alice", "alice password")?;
    a.login(BOB, "bob", "bob password")?;
    let shared = a.path("shared");
    fs::create_dir(&shared)?;
    let s = shared.display().to_string();
    a.venus_ok(&["setacl", &s, "system:authuser", "rlidwk"]);
    ok(sh(ALICE, &format!("ls {s}")));

    a.venus_ok(&["disconnect"]);
    ok(sh(ALICE, &format!("echo offline > {s}/by-alice")));
    // One user's changes per volume log, as in Coda: bob waits until alice's are in.
    let out = sh(BOB, &format!("echo bob > {s}/by-bob"));
    assert!(!out.status.success(), "bob's offline write must wait for alice's log");
    // alice's token goes away before the servers come back: her changes wait for her.
    ok(venus_as(&a, ALICE, &["logout"]));
    a.venus_ok(&["reconnect"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.pending() > 0, "reintegrated without the owner's token");
    let waiting: Vec<_> = a.status()["volumes"].as_array().cloned().unwrap_or_default();
    assert!(waiting.iter().any(|v| v["waiting_for_login"] == ALICE), "{waiting:?}");
    a.login(ALICE, "alice", "alice password")?;
    a.wait_reintegrated()?;
    let owner = Command::new("stat").args(["-c", "%u"]).arg(a.path("shared/by-alice")).output()?;
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout).trim(),
        ALICE.to_string(),
        "owned by alice, who is uid {ALICE} here"
    );
    ok(sh(BOB, &format!("echo bob > {s}/by-bob")));
    Ok(())
}

#[test]
fn an_offline_store_refused_because_rights_were_revoked_is_kept_for_its_author() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("revoke.test")?;
    vice.create_user("alice", "alice password")?;
    let a = shared_mount(&vice, "revoke.test")?;
    let b = VenusMount::start(&vice, "revoke.test")?;
    a.login(ALICE, "alice", "alice password")?;
    let shared = a.path("shared");
    fs::create_dir(&shared)?;
    a.venus_ok(&["setacl", &shared.display().to_string(), "system:authuser", "rlidwk"]);
    let s = shared.display().to_string();
    ok(sh(ALICE, &format!("echo v1 > {s}/notes")));

    a.venus_ok(&["disconnect"]);
    ok(sh(ALICE, &format!("echo v2 >> {s}/notes")));
    // Meanwhile an administrator takes alice's write and insert rights away (an owner with `i`
    // may write her own files, as in AFS).
    b.venus_ok(&["setacl", &b.path("shared").display().to_string(), "alice", "iw", "--negative"]);
    a.venus_ok(&["reconnect"]);
    a.wait_reintegrated()?;

    let conflicts: serde_json::Value = serde_json::from_str(&a.venus_ok(&["conflicts", "--json"]))?;
    let c = &conflicts[0];
    assert_eq!(c["kind"], "store refused", "{conflicts}");
    assert!(c["detail"].as_str().unwrap_or("").contains("permission denied"), "{conflicts}");
    let kept = c["local_copy"].as_str().expect("a local copy");
    assert_eq!(ok(sh(ALICE, &format!("cat {kept}"))), "v1\nv2\n", "alice's offline version is kept for her");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(kept)?.uid(), ALICE);
    denied(sh(BOB, &format!("cat {kept}")));
    // The server keeps what it had; the cache shows it again.
    assert_eq!(fs::read(b.path("shared/notes"))?, b"v1\n");
    assert_eq!(ok(sh(ALICE, &format!("cat {s}/notes"))), "v1\n");
    Ok(())
}

async fn denied_remote<T: std::fmt::Debug>(r: anyhow::Result<T>) -> RemoteError {
    let e = r.expect_err("the server must refuse");
    if let Some(remote) = e.downcast_ref::<RemoteError>() {
        return remote.clone();
    }
    match e.downcast_ref::<ProtoError>() {
        Some(ProtoError::Remote(remote)) => remote.clone(),
        _ => panic!("expected a refusal, got {e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_fids_give_nothing_the_acl_does_not() -> R {
    let vice = Vice::start("token.test")?;
    vice.create_user("alice", "alice password")?;
    vice.create_user("bob", "bob password")?;
    let admin = TestClient::admin(&vice).await?;
    let root = admin.root_of("root.cell").await?;

    let mut alice = TestClient::connect(&vice.cell_file()).await?;
    let wrong = alice.login("alice", "not her password", 0).await;
    assert_eq!(denied_remote(wrong).await, RemoteError::BadLogin);
    let wrong = alice.login("nobody-at-all", "whatever1", 0).await;
    assert_eq!(denied_remote(wrong).await, RemoteError::BadLogin);
    let token = alice.login("alice", "alice password", 0).await?;
    assert_eq!(token.body.cell, "token.test");

    // alice may not write in root.cell (administrators only); the admin gives her a directory.
    assert_eq!(denied_remote(alice.create(root, "nope").await).await, RemoteError::PermissionDenied);
    let dir = {
        let object = ObjectId::random();
        let applied = admin
            .mutate(Record {
                op: OpId::random(),
                mutation: Mutation::MakeDir {
                    parent: root,
                    name: Name::new("alice")?,
                    object,
                    mode: 0o755,
                    owner: 0,
                    group: 0,
                    mtime: Timestamp::now(),
                },
            })
            .await?;
        applied.attrs.into_iter().find(|a| a.fid.object == object).expect("dir").fid
    };
    for (who, rights) in [("alice", "all"), ("system:anyuser", "none")] {
        let req =
            Request::SetAclEntry { fid: dir, who: who.into(), rights: Rights::parse(rights).unwrap(), negative: false };
        admin.call_ok(&req).await?;
    }
    let secret = alice.create(dir, "secret").await?;
    let secret = alice.store(&secret, b"alice's secret").await?;
    assert_eq!(secret.owner, 2, "alice is the cell's second user (after admin)");

    // Knowing the Fid is not enough: bob and the anonymous user get nothing.
    let mut bob = TestClient::connect(&vice.cell_file()).await?;
    bob.login("bob", "bob password", 0).await?;
    let anon = TestClient::connect(&vice.cell_file()).await?;
    for c in [&bob, &anon] {
        assert_eq!(denied_remote(c.fetch(secret.fid).await).await, RemoteError::PermissionDenied);
        assert_eq!(denied_remote(c.status(secret.fid).await).await, RemoteError::PermissionDenied);
        assert_eq!(denied_remote(c.store(&secret, b"overwritten").await).await, RemoteError::PermissionDenied);
        let listing = c.call_ok(&Request::FetchDir { fid: dir }).await;
        assert_eq!(denied_remote(listing).await, RemoteError::PermissionDenied);
    }
    assert_eq!(alice.fetch(secret.fid).await?.1, b"alice's secret");

    // A forged token (another user's id under alice's seal) and an altered expiry are refused.
    let mut forged = alice.token.clone();
    if let Some(t) = forged.as_mut() {
        t.body.user = PtsId(1);
    }
    let r = bob.session.call_as(forged.as_ref(), &Request::FetchStatus { fid: secret.fid }).await?;
    assert!(matches!(r, Response::Error(RemoteError::BadToken(m)) if m.contains("bad seal")));
    let mut stretched = alice.token.clone().expect("token");
    stretched.body.expires += 86_400 * 365;
    let r = bob.session.call_as(Some(&stretched), &Request::FetchStatus { fid: secret.fid }).await?;
    assert!(matches!(r, Response::Error(RemoteError::BadToken(_))), "{r:?}");

    // A token of another cell is refused, even for a user of the same name.
    let other = Vice::start("other.test")?;
    other.create_user("alice", "alice password")?;
    let mut elsewhere = TestClient::connect(&other.cell_file()).await?;
    let foreign = elsewhere.login("alice", "alice password", 0).await?;
    let r = bob.session.call_as(Some(&foreign), &Request::FetchStatus { fid: secret.fid }).await?;
    assert!(matches!(r, Response::Error(RemoteError::BadToken(_))), "{r:?}");

    // An expired token is refused.
    let mut brief = TestClient::connect(&vice.cell_file()).await?;
    brief.login("alice", "alice password", 1).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = brief.call_ok(&Request::FetchStatus { fid: secret.fid }).await;
    assert!(matches!(denied_remote(r).await, RemoteError::BadToken(m) if m.contains("expired")));

    // Administration needs an administrator: bob's token is not one, the admin user's is.
    let r =
        bob.call_ok(&Request::PtsCreateUser { name: "mallory".into(), password: "mallory pw".into(), id: None }).await;
    assert_eq!(denied_remote(r).await, RemoteError::NotAdmin);
    let mut admin_user = TestClient::connect(&vice.cell_file()).await?;
    admin_user.login("admin", &vice.admin_password(), 0).await?;
    admin_user
        .call_ok(&Request::PtsCreateUser { name: "carol".into(), password: "carol password".into(), id: None })
        .await?;
    // Users change their own password only.
    let r = bob.call_ok(&Request::PtsSetPassword { user: "alice".into(), password: "stolen!!".into() }).await;
    assert_eq!(denied_remote(r).await, RemoteError::NotAdmin);
    bob.call_ok(&Request::PtsSetPassword { user: "bob".into(), password: "new bob password".into() }).await?;
    // A deleted user's token stops working at once.
    admin.call_ok(&Request::PtsDelete { name: "alice".into() }).await?;
    let r = alice.call_ok(&Request::FetchStatus { fid: dir }).await;
    assert!(matches!(denied_remote(r).await, RemoteError::BadToken(m) if m.contains("no longer exists")));
    Ok(())
}

#[test]
fn files_are_their_owners_so_git_works_on_the_mount_and_chown_is_for_administrators() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("git.test")?;
    vice.create_user("alice", "alice password")?;
    // bob's AFS id is his Unix uid (`pts createuser --id`): his files show as his everywhere.
    let pw = tempfile::NamedTempFile::new()?;
    fs::write(pw.path(), "bob password")?;
    let made = ok(vice.pts(&[
        "createuser",
        "bob",
        "--id",
        &BOB.to_string(),
        "--password-file",
        &pw.path().display().to_string(),
    ]));
    assert!(made.contains(&format!("id {BOB}")), "{made}");
    assert!(
        !vice
            .pts(&[
                "createuser",
                "bobby",
                "--id",
                &BOB.to_string(),
                "--password-file",
                &pw.path().display().to_string()
            ])
            .status
            .success(),
        "an id is never given twice"
    );
    let a = shared_mount(&vice, "git.test")?;
    a.login(ALICE, "alice", "alice password")?;
    let home = a.path("alice");
    fs::create_dir(&home)?;
    a.venus_ok(&["setacl", &home.display().to_string(), "alice", "all"]);
    // git wants a home for its configuration: a local one, alice's.
    let local = tempfile::tempdir()?;
    fs::set_permissions(local.path(), fs::Permissions::from_mode(0o755))?;
    let git_home = local.path().join("alice");
    fs::create_dir(&git_home)?;
    std::os::unix::fs::chown(&git_home, Some(ALICE), Some(ALICE))?;
    let git = |script: &str| {
        sh(
            ALICE,
            &format!(
                "export HOME={} GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=alice GIT_AUTHOR_EMAIL=alice@git.test \
                 GIT_COMMITTER_NAME=alice GIT_COMMITTER_EMAIL=alice@git.test; cd {} && {script}",
                git_home.display(),
                home.display()
            ),
        )
    };

    // What alice makes is hers, as the kernel shows it: git sees no dubious ownership.
    ok(git("git init -q repo && cd repo && echo one > f && git add f && git commit -q -m one"));
    let owner = ok(sh(ALICE, &format!("stat -c %u {}/repo {}/repo/f", home.display(), home.display())));
    assert_eq!(owner.split_whitespace().collect::<Vec<_>>(), [ALICE.to_string(), ALICE.to_string()], "{owner}");
    assert_eq!(ok(git("cd repo && git status --porcelain")), "", "a clean tree");
    ok(git("git clone -q repo clone && cd clone && echo two >> f && git commit -q -am two"));
    assert_eq!(ok(git("cd clone && git status --porcelain && git log --oneline | wc -l")).trim(), "2");
    assert!(
        ok(git("cd clone && git status")).contains("ahead of 'origin/master' by 1 commit")
            || ok(git("cd clone && git status")).contains("ahead of 'origin/main' by 1 commit")
    );

    // chown: the owner the kernel shows is no change (cp -p, tar as the owner); anything else is
    // for administrators, and a clear EPERM for everyone else.
    let f = format!("{}/repo/f", home.display());
    ok(sh(ALICE, &format!("chown {ALICE} {f}")));
    let out = sh(ALICE, &format!("chown {BOB} {f}"));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    // Where nobody holds alice's token (another client), her files show her id in the cell.
    let entries: serde_json::Value = serde_json::from_str(&ok(vice.pts(&["listentries", "--json"])))?;
    let id_of = |name: &str| {
        entries.as_array().and_then(|e| e.iter().find(|e| e["name"] == name)).and_then(|e| e["id"].as_i64())
    };
    let alice_id = id_of("alice").expect("alice's id");
    assert_eq!(id_of("bob"), Some(i64::from(BOB)));
    let b = VenusMount::start(&vice, "git.test")?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(i64::from(fs::metadata(b.path("alice/repo/f"))?.uid()), alice_id);
    // An administrator (root, logged in as admin) gives it to bob: his id, on both clients.
    ok(sh(0, &format!("chown {BOB} {f}")));
    assert_eq!(ok(sh(ALICE, &format!("stat -c %u {f}"))).trim(), BOB.to_string());
    assert_eq!(fs::metadata(b.path("alice/repo/f"))?.uid(), BOB);
    Ok(())
}
