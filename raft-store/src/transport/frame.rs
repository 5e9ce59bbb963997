//! Length-delimited frames on byte streams (QUIC streams in practice), and
//! helpers that put prost messages in them.
//!
//! A frame is `[payload length: u32 big-endian][payload]`. The reader is told
//! the largest payload it accepts and refuses a bigger one with
//! [`Error::TooLarge`] after reading only the 4-byte prefix, before
//! allocating. This module knows nothing of what the payloads mean; the raft
//! envelope and the client protocol are defined by their users.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, Result};

/// Largest raft frame. A frame carries one raft message, and a
/// `MsgSnapshot` carries the whole state machine image; the log refuses to
/// store a snapshot bigger than this too
/// ([`crate::log::SNAPSHOT_FILE_BYTES_MAX`]), so any snapshot the store can
/// take can be sent. Ordinary append messages are kilobytes.
pub const RAFT_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Largest client-protocol frame (one request or one response). Values are
/// bounded at 1.5 MiB as in etcd; 4 MiB leaves room for a transaction of
/// several such puts or a page of range results, while a misbehaving client
/// can make the server allocate no more than this per stream.
pub const CLIENT_FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

const LENGTH_PREFIX_BYTES: usize = 4;

/// Writes one frame holding `payload`. Refuses a payload over `max_bytes`
/// (the limit the reader will apply) rather than sending what the peer must
/// reject.
pub async fn write_frame<W>(writer: &mut W, payload: &[u8], max_bytes: usize) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    check_size(payload.len(), max_bytes)?;
    let length = u32::try_from(payload.len()).map_err(|_| Error::TooLarge {
        what: "frame",
        size: payload.len(),
        limit: u32::MAX as usize,
    })?;
    writer
        .write_all(&length.to_be_bytes())
        .await
        .map_err(|e| Error::Transport(format!("writing frame length: {e}")))?;
    writer
        .write_all(payload)
        .await
        .map_err(|e| Error::Transport(format!("writing frame: {e}")))
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly before a new
/// frame began; a stream ending inside a frame is an error.
pub async fn read_frame<R>(reader: &mut R, max_bytes: usize) -> Result<Option<Vec<u8>>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let read = reader
            .read(&mut prefix[filled..])
            .await
            .map_err(|e| Error::Transport(format!("reading frame length: {e}")))?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Error::Transport(
                "stream ended inside a frame length".into(),
            ));
        }
        filled += read;
    }
    let length = u32::from_be_bytes(prefix) as usize;
    check_size(length, max_bytes)?;
    let mut payload = vec![0u8; length];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(|e| Error::Transport(format!("reading a frame of {length} bytes: {e}")))?;
    Ok(Some(payload))
}

/// Encodes `message` with prost and writes it as one frame.
pub async fn write_message<W, M>(writer: &mut W, message: &M, max_bytes: usize) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
    M: prost::Message,
{
    let mut frame = Vec::new();
    encode_frame(message, max_bytes, &mut frame)?;
    writer
        .write_all(&frame)
        .await
        .map_err(|e| Error::Transport(format!("writing frame: {e}")))
}

/// Appends `message` as one frame to `out`, for callers that write several
/// frames with one stream write.
pub fn encode_frame<M: prost::Message>(
    message: &M,
    max_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let length = message.encoded_len();
    check_size(length, max_bytes)?;
    let prefix = u32::try_from(length).map_err(|_| Error::TooLarge {
        what: "frame",
        size: length,
        limit: u32::MAX as usize,
    })?;
    out.reserve(LENGTH_PREFIX_BYTES + length);
    out.extend_from_slice(&prefix.to_be_bytes());
    message
        .encode(out)
        .map_err(|e| Error::Transport(format!("encoding frame: {e}")))
}

/// Reads one frame and decodes it with prost. `Ok(None)` at a clean end of
/// stream, as [`read_frame`].
pub async fn read_message<R, M>(reader: &mut R, max_bytes: usize) -> Result<Option<M>>
where
    R: AsyncRead + Unpin + ?Sized,
    M: prost::Message + Default,
{
    let Some(payload) = read_frame(reader, max_bytes).await? else {
        return Ok(None);
    };
    M::decode(payload.as_slice())
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("undecodable frame: {e}")))
}

fn check_size(size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            what: "frame",
            size,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Probe {
        #[prost(string, tag = "1")]
        text: String,
    }

    #[tokio::test]
    async fn messages_round_trip_and_end_cleanly() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let sent = Probe {
            text: "hello".into(),
        };
        write_message(&mut client, &sent, 64).await.expect("write");
        drop(client);
        let received: Option<Probe> = read_message(&mut server, 64).await.expect("read");
        assert_eq!(received, Some(sent));
        let end: Option<Probe> = read_message(&mut server, 64).await.expect("end");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_from_its_prefix_alone() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        // Only the prefix is sent: the reader must refuse without waiting
        // for (or allocating) the claimed gigabyte.
        client
            .write_all(&(1u32 << 30).to_be_bytes())
            .await
            .expect("write prefix");
        match read_frame(&mut server, CLIENT_FRAME_BYTES_MAX).await {
            Err(Error::TooLarge { size, limit, .. }) => {
                assert_eq!(size, 1 << 30);
                assert_eq!(limit, CLIENT_FRAME_BYTES_MAX);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn writer_refuses_what_the_reader_would() {
        let (mut client, _server) = tokio::io::duplex(1024);
        let result = write_frame(&mut client, &[0; 100], 10).await;
        assert!(matches!(result, Err(Error::TooLarge { size: 100, .. })));
    }

    #[tokio::test]
    async fn stream_ending_inside_a_frame_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[0, 0, 0, 9, 1, 2]).await.expect("write");
        drop(client);
        assert!(matches!(
            read_frame(&mut server, 64).await,
            Err(Error::Transport(_))
        ));
    }
}
