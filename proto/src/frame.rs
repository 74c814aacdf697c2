//! Length-prefixed postcard frames on a byte stream.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of postcard. The length is
//! checked against [`MAX_FRAME`] before anything is allocated, and a message must use every byte
//! of its frame, so a hostile peer can neither make us allocate gigabytes nor hide data behind a
//! valid prefix. Bulk file data is never framed: it follows a header as raw bytes whose length
//! the header announced.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProtoError;

/// The largest header a peer may send. Chunk lists of files up to ~25 GiB fit.
pub const MAX_FRAME: u32 = 4 * 1024 * 1024;

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let body = postcard::to_stdvec(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME as usize {
        return Err(ProtoError::FrameTooLarge { len: body.len() as u64, max: MAX_FRAME });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a whole message body, refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    let _ = crate::name::take_last_rejection();
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| match crate::name::take_last_rejection() {
        Some(name) => ProtoError::Malformed(format!("invalid name: {name}")),
        None => ProtoError::Malformed(e.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!("{} trailing bytes after the message", rest.len())));
    }
    Ok(msg)
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

pub async fn read_frame<R, T>(r: &mut R) -> Result<T, ProtoError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge { len: u64::from(len), max: MAX_FRAME });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Fid, ObjectId, VolumeId};
    use crate::msg::Request;

    #[tokio::test]
    async fn round_trip() {
        let req = Request::FetchStatus { fid: Fid::new(VolumeId(3), ObjectId(99)) };
        let bytes = encode(&req).unwrap();
        let mut r = &bytes[..];
        let back: Request = read_frame(&mut r).await.unwrap();
        assert_eq!(back, req);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_without_allocating() {
        let mut bytes = (u32::MAX).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let mut r = &bytes[..];
        let err = read_frame::<_, Request>(&mut r).await.unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_io_error() {
        let bytes = encode(&Request::ListVldb).unwrap();
        let mut r = &bytes[..bytes.len() - 1];
        assert!(matches!(read_frame::<_, Request>(&mut r).await, Err(ProtoError::Io(_))));
        let mut empty: &[u8] = &[];
        assert!(matches!(read_frame::<_, Request>(&mut empty).await, Err(ProtoError::Io(_))));
    }

    #[tokio::test]
    async fn garbage_and_trailing_bytes_are_malformed() {
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut r = &bytes[..];
        assert!(matches!(read_frame::<_, Request>(&mut r).await, Err(ProtoError::Malformed(_))));

        let body = postcard::to_stdvec(&Request::ListVldb).unwrap();
        let mut framed = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&body);
        framed.push(0);
        let mut r = &framed[..];
        assert!(matches!(read_frame::<_, Request>(&mut r).await, Err(ProtoError::Malformed(_))));
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;
    use crate::*;

    #[test]
    fn a_bad_name_inside_a_message_is_named_in_the_error() {
        let m = Mutation::Link {
            parent: Fid::new(VolumeId(1), ObjectId(1)),
            name: Name::new("abc").unwrap(),
            target: ObjectId(2),
        };
        let mut bytes = postcard::to_stdvec(&m).unwrap();
        let pos = bytes.windows(3).position(|w| w == b"abc").unwrap();
        bytes[pos + 1] = b'/';
        let err = decode::<Mutation>(&bytes).unwrap_err();
        assert!(err.to_string().contains("invalid name: name contains '/'"), "{err}");
    }
}
