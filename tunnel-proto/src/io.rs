//! Frames over async byte streams. Reads exactly one frame and never past
//! it, so a data stream's header can be read before HTTP takes over.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::frame::{Frame, decode_payload, parse_header};
use crate::limits::FRAME_HEADER_LEN;

fn eof_is_truncation(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Truncated
    } else {
        Error::Io(e)
    }
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
///
/// Allocates at most [`MAX_FRAME_PAYLOAD`](crate::limits::MAX_FRAME_PAYLOAD)
/// bytes, after the header has been checked. Not cancellation safe: a frame
/// cut off mid-read is lost, so callers race it only against session end.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    if r.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[1..]).await.map_err(eof_is_truncation)?;
    let (ty, len) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(eof_is_truncation)?;
    decode_payload(ty, &payload).map(Some)
}

/// Reads one frame, treating end of stream as an error.
pub async fn expect_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame> {
    read_frame(r).await?.ok_or_else(|| Error::Closed("stream ended".into()))
}

/// Writes and flushes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    let buf = frame.to_bytes()?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Writes a frame, giving up after `limit`: a peer that stops reading its
/// control stream must not stall the loop that also watches its heartbeat.
pub async fn write_frame_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    limit: std::time::Duration,
) -> Result<()> {
    tokio::time::timeout(limit, write_frame(w, frame))
        .await
        .map_err(|_| Error::Closed(format!("control stream blocked for {limit:?}")))?
}

/// Reads frames on a task of its own and hands them over a channel, so the
/// caller can `select!` on them (channel receive is cancellation safe; a
/// frame read is not). The channel closes after end of stream or after the
/// first error, which is sent.
pub fn spawn_frame_reader<R>(mut r: R) -> tokio::sync::mpsc::Receiver<Result<Frame>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let item = match read_frame(&mut r).await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_FRAME_PAYLOAD;

    #[tokio::test]
    async fn reads_exactly_one_frame() {
        let mut bytes = Frame::Pong { seq: 5 }.to_bytes().unwrap();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.unwrap(), Some(Frame::Pong { seq: 5 }));
        assert_eq!(r, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn clean_eof_truncation_and_oversize() {
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).await.unwrap().is_none());
        let bytes = Frame::Pong { seq: 5 }.to_bytes().unwrap();
        let mut cut = &bytes[..bytes.len() - 1];
        assert!(matches!(read_frame(&mut cut).await, Err(Error::Truncated)));
        let mut cut_header = &bytes[..3];
        assert!(matches!(read_frame(&mut cut_header).await, Err(Error::Truncated)));
        let mut huge = vec![1u8, 0x07];
        huge.extend_from_slice(&((MAX_FRAME_PAYLOAD as u32) + 1).to_be_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(Error::FrameTooLarge { .. })
        ));
    }
}
