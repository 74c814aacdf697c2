//! `CellConn` as the core's [`Remote`]: each typed call is one request, and its reply is
//! matched here, once. A reply of the wrong shape is a protocol error.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use proto::msg::VolumeValidation;
use proto::{ChunkHash, ChunkRef, Fid, Record, Request, Response, Rights, ServerId};
use proto::{Token, VersionVector, VolumeId, VolumeStamp};

use super::CellConn;
use crate::error::{Result, VenusError};
use crate::ids::CellId;
use crate::remote::{
    AclView, At, Call, Checked, ChunkSource, Data, DataSink, Dir, Mutated, PermitAnswer, Reintegrated, Remote, Status,
};

fn unexpected<T>(asked: &str, other: Response) -> Result<T> {
    Err(VenusError::Protocol(format!("unexpected reply to {asked}: {other:?}")))
}

impl Remote for CellConn {
    fn id(&self) -> CellId {
        self.id
    }

    fn name(&self) -> &str {
        &self.file.cell
    }

    fn servers(&self) -> Vec<(ServerId, String)> {
        self.file.servers.iter().map(|s| (s.server_id(), s.address.clone())).collect()
    }

    fn is_down(&self) -> bool {
        CellConn::is_down(self)
    }

    fn any_down(&self) -> bool {
        CellConn::any_down(self)
    }

    fn volume_down(&self, volume: VolumeId) -> bool {
        CellConn::volume_down(self, volume)
    }

    fn probe(&self) -> BoxFuture<'_, bool> {
        CellConn::probe(self).boxed()
    }

    fn connected(&self) -> BoxFuture<'_, Vec<ServerId>> {
        CellConn::connected(self).boxed()
    }

    fn close_all(&self) -> BoxFuture<'_, ()> {
        CellConn::close_all(self).boxed()
    }

    fn login<'a>(&'a self, user: &'a str, password: &'a str, lifetime: u32) -> Call<'a, Token> {
        CellConn::login(self, user, password, lifetime).boxed()
    }

    fn server_of(&self, volume: VolumeId) -> Call<'_, ServerId> {
        CellConn::server_of(self, volume).boxed()
    }

    fn locate(&self, volume: VolumeId) -> Call<'_, ServerId> {
        CellConn::locate(self, volume).boxed()
    }

    fn resolve_volume<'a>(&'a self, name: &'a str, prefer_ro: bool) -> Call<'a, (VolumeId, String)> {
        CellConn::resolve_volume(self, name, prefer_ro).boxed()
    }

    fn fetch_status(&self, fid: Fid) -> Call<'_, Status> {
        async move {
            match self.call(Some(fid.volume), &Request::FetchStatus { fid }).await? {
                Response::Status { attr, promise, access } => Ok(Status { attr, promise, access }),
                other => unexpected("FetchStatus", other),
            }
        }
        .boxed()
    }

    fn fetch_dir(&self, fid: Fid) -> Call<'_, Dir> {
        async move {
            match self.call(Some(fid.volume), &Request::FetchDir { fid }).await? {
                Response::Dir { attr, entries, promise, access } => Ok(Dir { attr, entries, promise, access }),
                other => unexpected("FetchDir", other),
            }
        }
        .boxed()
    }

    fn fetch_data<'a>(&'a self, fid: Fid, sink: DataSink<'a>) -> Call<'a, Data> {
        CellConn::fetch_data(self, fid, sink).boxed()
    }

    fn fetch_acl(&self, fid: Fid) -> Call<'_, AclView> {
        async move {
            match self.call(Some(fid.volume), &Request::FetchAcl { fid }).await? {
                Response::Acl { acl, names, access } => Ok(AclView { acl, names, access }),
                other => unexpected("FetchAcl", other),
            }
        }
        .boxed()
    }

    fn volume_space(&self, volume: VolumeId) -> Call<'_, proto::msg::VolumeSpace> {
        async move {
            match self.call(Some(volume), &Request::GetVolumeSpace { volume }).await? {
                Response::VolumeSpace { space } => Ok(space),
                other => unexpected("GetVolumeSpace", other),
            }
        }
        .boxed()
    }

    fn set_acl_entry<'a>(&'a self, fid: Fid, who: &'a str, rights: Rights, negative: bool) -> Call<'a, Status> {
        async move {
            let req = Request::SetAclEntry { fid, who: who.to_string(), rights, negative };
            match self.call(Some(fid.volume), &req).await? {
                Response::Status { attr, promise, access } => Ok(Status { attr, promise, access }),
                other => unexpected("SetAclEntry", other),
            }
        }
        .boxed()
    }

    fn mutate(&self, volume: VolumeId, record: Record) -> Call<'_, Mutated> {
        async move {
            match self.call(Some(volume), &Request::Mutate { record }).await? {
                Response::Applied { result, promise } => Ok(Mutated { result, promise }),
                other => unexpected("Mutate", other),
            }
        }
        .boxed()
    }

    fn mutate_with_chunks<'a>(
        &'a self,
        volume: VolumeId,
        chunks: Vec<ChunkRef>,
        record: Record,
        read: ChunkSource<'a>,
    ) -> Call<'a, Mutated> {
        async move {
            match self.send_chunks(volume, Request::PutChunksAndMutate { chunks, record }, read).await? {
                Response::Applied { result, promise } => Ok(Mutated { result, promise }),
                other => unexpected("PutChunksAndMutate", other),
            }
        }
        .boxed()
    }

    fn reintegrate(&self, volume: VolumeId, records: Vec<Record>) -> Call<'_, Reintegrated> {
        async move {
            let sent = records.len();
            match self.call(Some(volume), &Request::Reintegrate { volume, records }).await? {
                Response::Reintegrated { results, promise } if results.len() == sent => {
                    Ok(Reintegrated { results, promise })
                }
                Response::Reintegrated { .. } => {
                    Err(VenusError::Protocol("Reintegrate answered a different number of records".into()))
                }
                other => unexpected("Reintegrate", other),
            }
        }
        .boxed()
    }

    fn missing_chunks(&self, volume: VolumeId, hashes: Vec<ChunkHash>) -> Call<'_, Vec<u32>> {
        async move {
            match self.call(Some(volume), &Request::MissingChunks { volume, hashes }).await? {
                Response::Missing { indices } => Ok(indices),
                other => unexpected("MissingChunks", other),
            }
        }
        .boxed()
    }

    fn put_chunks<'a>(&'a self, volume: VolumeId, chunks: Vec<ChunkRef>, read: ChunkSource<'a>) -> Call<'a, u32> {
        async move {
            match self.send_chunks(volume, Request::PutChunks { volume, chunks }, read).await? {
                Response::ChunksStored { stored } => Ok(stored),
                other => unexpected("PutChunks", other),
            }
        }
        .boxed()
    }

    fn request_permit(&self, volume: VolumeId) -> Call<'_, PermitAnswer> {
        async move {
            let secs = |s: u32| std::time::Duration::from_secs(u64::from(s));
            match self.call(Some(volume), &Request::RequestPermit { volume }).await? {
                Response::Permit { lease_secs } => Ok(PermitAnswer::Granted(secs(lease_secs))),
                Response::PermitRefused { retry_secs } => Ok(PermitAnswer::Refused(secs(retry_secs))),
                other => unexpected("RequestPermit", other),
            }
        }
        .boxed()
    }

    fn return_permit(&self, volume: VolumeId) -> Call<'_, ()> {
        async move {
            match self.call(Some(volume), &Request::ReturnPermit { volume }).await? {
                Response::Done => Ok(()),
                other => unexpected("ReturnPermit", other),
            }
        }
        .boxed()
    }

    fn validate_volumes(&self, at: ServerId, volumes: Vec<(VolumeId, VolumeStamp)>) -> Call<'_, Vec<VolumeValidation>> {
        async move {
            match self.call_on(at, &Request::ValidateVolumes { volumes }).await? {
                Response::Validated { volumes } => Ok(volumes),
                other => unexpected("ValidateVolumes", other),
            }
        }
        .boxed()
    }

    fn validate_attrs(&self, at: At, objects: Vec<(Fid, VersionVector)>) -> Call<'_, Checked> {
        async move {
            let asked = objects.len();
            let req = Request::ValidateAttrs { objects };
            let answer = match at {
                At::Server(server) => self.call_on(server, &req).await?,
                At::ServerOf(volume) => self.call(Some(volume), &req).await?,
            };
            match answer {
                Response::AttrsValidated { results, promise } if results.len() == asked => {
                    Ok(Checked { results, promise })
                }
                Response::AttrsValidated { .. } => {
                    Err(VenusError::Protocol("ValidateAttrs answered a different count".into()))
                }
                other => unexpected("ValidateAttrs", other),
            }
        }
        .boxed()
    }
}
