//! The control socket: how the `venus` and `hoard` commands talk to a running venus.
//!
//! A Unix socket in the cache directory that every local user may connect to: the kernel tells
//! venus who connected (SO_PEERCRED), and each request runs as that user, so `venus login`
//! gets a token for the right uid and `listacl` shows what that user may see. Commands that
//! change venus itself (unmount, disconnect, reconnect) are for root and the user venus runs
//! as. One JSON request per connection, one JSON answer. Paths are absolute paths inside the
//! mount.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::fs::Venus;

pub const SOCKET: &str = "venus.sock";
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Flush {
        path: PathBuf,
    },
    Whereis {
        path: PathBuf,
    },
    Fid {
        path: PathBuf,
    },
    Mkmount {
        path: PathBuf,
        volume: String,
        /// A read-write mount point (`%volume`): never leads to a read-only replica.
        #[serde(default)]
        rw: bool,
    },
    Lsmount {
        path: PathBuf,
    },
    Rmmount {
        path: PathBuf,
    },
    Unmount,
    Disconnect {
        volume: Option<String>,
    },
    Reconnect,
    /// One step of `venus sync`: waits up to `timeout_secs`, then says how far it got.
    Sync {
        timeout_secs: u64,
    },
    Conflicts,
    Repair {
        path: PathBuf,
        keep: String,
    },
    HoardAdd {
        entry: hoard::HoardEntry,
    },
    HoardRm {
        path: String,
    },
    HoardList,
    HoardLoad {
        text: String,
        label: String,
    },
    /// Starts a walk (if none runs) and returns at once; progress comes from `HoardProgress`.
    HoardWalk,
    HoardProgress,
    HoardVerify,
    Login {
        cell: Option<String>,
        user: String,
        password: String,
        /// Seconds; 0 for the cell's default.
        lifetime: u32,
    },
    Tokens,
    Logout {
        cell: Option<String>,
    },
    ListAcl {
        path: PathBuf,
    },
    SetAcl {
        path: PathBuf,
        who: String,
        rights: String,
        negative: bool,
    },
}

impl ControlRequest {
    /// Whether the request changes venus for everyone rather than act for its user.
    fn privileged(&self) -> bool {
        matches!(self, ControlRequest::Unmount | ControlRequest::Disconnect { .. } | ControlRequest::Reconnect)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlResponse {
    Ok(serde_json::Value),
    Err(String),
}

/// The path's components below the mount point, or an error if it is outside.
fn components(mountpoint: &Path, path: &Path) -> Result<Vec<String>, String> {
    let rel = path
        .strip_prefix(mountpoint)
        .map_err(|_| format!("{} is not inside the venus mount at {}", path.display(), mountpoint.display()))?;
    rel.components()
        .map(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_string).ok_or_else(|| "path is not UTF-8".into()),
            other => Err(format!("unexpected path component {other:?}")),
        })
        .collect()
}

async fn answer(
    core: &Arc<Venus>,
    mountpoint: &Path,
    req: ControlRequest,
    stop: &tokio::sync::Notify,
) -> ControlResponse {
    let comps = |p: &Path| components(mountpoint, p);
    let json = |v: Result<serde_json::Value, String>| match v {
        Ok(v) => ControlResponse::Ok(v),
        Err(e) => ControlResponse::Err(e),
    };
    let err = |e: crate::error::VenusError| e.to_string();
    match req {
        ControlRequest::Status => {
            let mut v = serde_json::to_value(core.status_report().await).unwrap_or_default();
            v["mountpoint"] = serde_json::Value::String(mountpoint.display().to_string());
            ControlResponse::Ok(v)
        }
        ControlRequest::Flush { path } => json(
            async {
                let dropped = core.flush_path(&comps(&path)?).await.map_err(err)?;
                Ok(serde_json::json!({ "dropped": dropped }))
            }
            .await,
        ),
        ControlRequest::Whereis { path } => json(
            async {
                let w = core.where_is(&comps(&path)?).await.map_err(err)?;
                serde_json::to_value(w).map_err(|e| e.to_string())
            }
            .await,
        ),
        ControlRequest::Fid { path } => json(
            async {
                let (cell, fid) = core.fid_of(&comps(&path)?).await.map_err(err)?;
                Ok(serde_json::json!({ "cell": cell, "fid": fid.to_string(), "volume": fid.volume.0 }))
            }
            .await,
        ),
        ControlRequest::Mkmount { path, volume, rw } => json(
            async {
                core.mkmount(&comps(&path)?, &volume, rw).await.map_err(err)?;
                Ok(serde_json::Value::Null)
            }
            .await,
        ),
        ControlRequest::Lsmount { path } => json(
            async {
                let target = core.lsmount(&comps(&path)?).await.map_err(err)?;
                Ok(serde_json::json!({ "target": target }))
            }
            .await,
        ),
        ControlRequest::Rmmount { path } => json(
            async {
                core.rmmount(&comps(&path)?).await.map_err(err)?;
                Ok(serde_json::Value::Null)
            }
            .await,
        ),
        ControlRequest::Unmount => {
            stop.notify_one();
            ControlResponse::Ok(serde_json::Value::Null)
        }
        ControlRequest::Disconnect { volume } => {
            json(core.disconnect(volume.as_deref()).await.map(|v| serde_json::json!(v)).map_err(err))
        }
        ControlRequest::Reconnect => {
            core.clear_forced();
            let core = core.clone();
            tokio::spawn(async move { core.tick().await });
            ControlResponse::Ok(serde_json::Value::Null)
        }
        ControlRequest::Sync { timeout_secs } => json(
            core.sync(std::time::Duration::from_secs(timeout_secs))
                .await
                .and_then(|p| serde_json::to_value(p).map_err(|e| e.to_string())),
        ),
        ControlRequest::Conflicts => {
            json(core.conflicts().map_err(err).and_then(|c| serde_json::to_value(c).map_err(|e| e.to_string())))
        }
        ControlRequest::Repair { path, keep } => json(
            async {
                let info = core.repair(&comps(&path)?, &keep).await.map_err(err)?;
                serde_json::to_value(info).map_err(|e| e.to_string())
            }
            .await,
        ),
        ControlRequest::HoardAdd { entry } => {
            json(core.hoarding.add(entry).map(|()| serde_json::Value::Null).map_err(err))
        }
        ControlRequest::HoardRm { path } => json(core.hoarding.remove(&path).map(|()| serde_json::Value::Null)),
        ControlRequest::HoardList => {
            let entries: Vec<serde_json::Value> = core
                .hoarding
                .list()
                .into_iter()
                .map(|(e, from)| serde_json::json!({ "line": hoard::format_entry(&e), "entry": e, "from": from }))
                .collect();
            let error = core.hoarding.profile_error();
            ControlResponse::Ok(serde_json::json!({
                "entries": entries,
                "profile_dir": core.hoarding.profile_dir().display().to_string(),
                "profile_error": error,
            }))
        }
        ControlRequest::HoardLoad { text, label } => {
            json(core.hoarding.load(&text, &label).map(|n| serde_json::json!({ "commands": n })))
        }
        ControlRequest::HoardWalk => {
            // A walk asked for right after a profile was saved walks that profile, whether or
            // not its change was noticed yet.
            core.hoarding.reload_profiles();
            let walker = core.clone();
            let request = core.hoarding.request_walk();
            let uid = crate::user::current_uid();
            tokio::spawn(crate::user::as_user(uid, async move {
                if let Err(e) = walker.hoard_walk().await {
                    tracing::warn!(error = %e, "hoard walk failed");
                    walker.hoarding.walk_failed(request);
                }
            }));
            ControlResponse::Ok(serde_json::json!({ "request": request }))
        }
        ControlRequest::HoardProgress => {
            let p = core.hoarding.progress();
            json(serde_json::to_value(p).map_err(|e| e.to_string()))
        }
        ControlRequest::HoardVerify => json(serde_json::to_value(core.hoard_verify().await).map_err(|e| e.to_string())),
        ControlRequest::Login { cell, user, password, lifetime } => {
            let result = core.login(cell.as_deref(), &user, &password, lifetime).await;
            if result.is_ok() {
                // Changes waiting for this user's token can go now.
                let core = core.clone();
                tokio::spawn(async move { core.tick().await });
            }
            json(result.map_err(err).and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string())))
        }
        ControlRequest::Tokens => json(serde_json::to_value(core.list_tokens()).map_err(|e| e.to_string())),
        ControlRequest::Logout { cell } => {
            json(core.logout(cell.as_deref()).map(|n| serde_json::json!({ "removed": n })).map_err(err))
        }
        ControlRequest::ListAcl { path } => json(
            async {
                let acl = core.listacl(&comps(&path)?).await.map_err(err)?;
                serde_json::to_value(acl).map_err(|e| e.to_string())
            }
            .await,
        ),
        ControlRequest::SetAcl { path, who, rights, negative } => json(
            async {
                let acl = core.setacl(&comps(&path)?, &who, &rights, negative).await.map_err(err)?;
                serde_json::to_value(acl).map_err(|e| e.to_string())
            }
            .await,
        ),
    }
}

/// Binds the control socket in the cache directory `cache` (replacing a stale one), open to
/// every local user. Call it inside the runtime; bound before the mount is announced, so a
/// command sent once the mount is up always finds it.
pub fn listen(cache: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = cache.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves the control socket bound by `listen` until the task is dropped.
pub async fn serve(
    listener: tokio::net::UnixListener,
    core: Arc<Venus>,
    mountpoint: PathBuf,
    stop: Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    // SAFETY: getuid has no preconditions.
    let owner = unsafe { libc::getuid() };
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else { continue };
        let (core, mountpoint, stop) = (core.clone(), mountpoint.clone(), stop.clone());
        tokio::spawn(crate::user::as_user(uid, async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST as u64));
            let response = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(req) if req.privileged() && uid != 0 && uid != owner => {
                        ControlResponse::Err("only root or the user venus runs as may do that".into())
                    }
                    Ok(req) => answer(&core, &mountpoint, req, &stop).await,
                    Err(e) => ControlResponse::Err(format!("bad request: {e}")),
                },
                Err(e) => ControlResponse::Err(format!("reading request: {e}")),
            };
            if let Ok(mut text) = serde_json::to_string(&response) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        }));
    }
}

/// Client side: sends one request to the venus whose cache directory is `cache`.
pub fn request(cache: &Path, req: &ControlRequest) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, Write};
    let path = cache.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("cannot reach venus at {}: {e} (is it running?)", path.display()))?;
    let mut text = serde_json::to_string(req).map_err(|e| e.to_string())?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(|e| e.to_string())?;
    match serde_json::from_str::<ControlResponse>(&line).map_err(|e| format!("bad answer from venus: {e}"))? {
        ControlResponse::Ok(v) => Ok(v),
        ControlResponse::Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_mount_are_refused() {
        let m = Path::new("/afs");
        assert_eq!(components(m, Path::new("/afs/c/x")).unwrap(), vec!["c", "x"]);
        assert!(components(m, Path::new("/tmp/x")).is_err());
        assert!(components(m, Path::new("/afs")).unwrap().is_empty());
    }
}
