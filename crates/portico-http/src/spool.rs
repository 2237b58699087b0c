//! Request bodies read to their end before an upstream connection is taken: the
//! `request_buffering` of every upstream route (nginx's `proxy_request_buffering` /
//! `uwsgi_request_buffering` / `fastcgi_request_buffering`), and bodies of unknown length
//! for the gateways (which must send CONTENT_LENGTH first).
//!
//! A spool keeps up to [`SPOOL_IN_MEMORY`] bytes in memory, the rest in a temporary
//! file that is unlinked at once, so it disappears with the request whatever happens.
//! The body's size limit and gap timeout are the caller's `ClientBody`.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::body::{client_status, BoxError, HttpBody};

/// Bodies are kept in memory up to this size, then in a temporary file (nginx's
/// client_body_buffer_size / client_body_temp_path).
pub const SPOOL_IN_MEMORY: usize = 256 * 1024;
/// How much of the file one read takes.
const FILE_CHUNK: usize = 64 * 1024;

/// A request body read to its end: in memory, then in an unlinked temporary file.
#[derive(Default)]
pub struct Spool {
    memory: Vec<Bytes>,
    file: Option<tokio::fs::File>,
    pub len: u64,
}

impl Spool {
    /// Reads `body` to its end (its limits and timeouts are the caller's `ClientBody`).
    pub async fn read(mut body: HttpBody) -> Result<Self, StatusCode> {
        let mut spool = Spool::default();
        let mut in_memory = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| client_status(&*e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            spool.len += data.len() as u64;
            if spool.file.is_none() && in_memory + data.len() <= SPOOL_IN_MEMORY {
                in_memory += data.len();
                spool.memory.push(data);
                continue;
            }
            if spool.file.is_none() {
                spool.file = Some(temp_file().await.map_err(spool_error)?);
            }
            if let Some(f) = spool.file.as_mut() {
                f.write_all(&data).await.map_err(spool_error)?;
            }
        }
        if let Some(f) = spool.file.as_mut() {
            f.flush().await.map_err(spool_error)?;
        }
        Ok(spool)
    }

    /// The body from its start, chunk by chunk (it may be read again: a retry).
    pub async fn chunks(&mut self) -> std::io::Result<Chunks<'_>> {
        if let Some(f) = self.file.as_mut() {
            f.seek(std::io::SeekFrom::Start(0)).await?;
        }
        Ok(Chunks {
            spool: self,
            next: 0,
            buf: Vec::new(),
        })
    }

    /// The spooled body as a request body to send once.
    pub fn into_body(self) -> HttpBody {
        let stream = futures_util::stream::unfold(
            (self, 0usize, false),
            |(mut spool, next, rewound)| async move {
                if let Some(b) = spool.memory.get(next).cloned() {
                    return Some((Ok(http_body::Frame::data(b)), (spool, next + 1, rewound)));
                }
                let file = spool.file.as_mut()?;
                if !rewound {
                    if let Err(e) = file.seek(std::io::SeekFrom::Start(0)).await {
                        return Some((Err(spool_failed(e)), (spool, next, true)));
                    }
                }
                let mut buf = vec![0u8; FILE_CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((
                            Ok(http_body::Frame::data(Bytes::from(buf))),
                            (spool, next, true),
                        ))
                    }
                    Err(e) => Some((Err(spool_failed(e)), (spool, next, true))),
                }
            },
        );
        http_body_util::StreamBody::new(stream).boxed()
    }
}

/// A walk over a spool's chunks (see [`Spool::chunks`]).
pub struct Chunks<'a> {
    spool: &'a mut Spool,
    next: usize,
    buf: Vec<u8>,
}

impl Chunks<'_> {
    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        if let Some(b) = self.spool.memory.get(self.next) {
            self.next += 1;
            return Ok(Some(b));
        }
        let Some(file) = self.spool.file.as_mut() else {
            return Ok(None);
        };
        self.buf.resize(FILE_CHUNK, 0);
        let n = file.read(&mut self.buf).await?;
        Ok((n > 0).then(|| &self.buf[..n]))
    }
}

fn spool_failed(e: std::io::Error) -> BoxError {
    tracing::error!(error = %e, "request body buffer file failed");
    e.into()
}

pub fn spool_error(e: std::io::Error) -> StatusCode {
    tracing::error!(error = %e, "request body buffer file failed");
    StatusCode::INTERNAL_SERVER_ERROR
}

/// A temporary file that is already unlinked: it goes away with its handle.
async fn temp_file() -> std::io::Result<tokio::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "portico-body-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .await?;
    tokio::fs::remove_file(&path).await?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn spool_of(parts: usize, size: usize) -> (Spool, Vec<u8>) {
        let data: Vec<u8> = (0..parts * size).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> = data
            .chunks(size)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        (Spool::read(body).await.unwrap(), data)
    }

    #[tokio::test]
    async fn spools_keep_bodies_in_memory_then_a_file_and_give_them_back_whole() {
        for (parts, size) in [(3, 1000), (40, 16 * 1024)] {
            let (mut spool, data) = spool_of(parts, size).await;
            assert_eq!(spool.len, data.len() as u64);
            assert_eq!(spool.file.is_some(), data.len() > SPOOL_IN_MEMORY);
            for _ in 0..2 {
                let mut again = Vec::new();
                let mut c = spool.chunks().await.unwrap();
                while let Some(chunk) = c.next().await.unwrap() {
                    again.extend_from_slice(chunk);
                }
                assert_eq!(again, data, "read again from the start");
            }
            let body = spool.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], &data[..]);
        }
    }
}
