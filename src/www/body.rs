//! A static file as a response body: read chunk by chunk on demand, one range or several
//! in `multipart/byteranges` framing.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::range::ByteRange;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

/// How much of a file is read per body frame.
pub(super) const CHUNK: usize = 64 * 1024;

/// The `multipart/byteranges` framing of several ranges (RFC 9110 §14.6), as Go's
/// `mime/multipart` writes it: each part's head names its range and the file's type.
pub(super) struct Framing {
    pub(super) boundary: String,
    ctype: &'static str,
    size: u64,
}

impl Framing {
    /// A boundary of 30 random bytes in hex, as Go makes it; `None` if the system has
    /// no randomness to give.
    pub(super) fn new(ctype: &'static str, size: u64) -> Option<Framing> {
        let mut raw = [0u8; 30];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut raw)
            .ok()?;
        let mut boundary = String::with_capacity(2 * raw.len());
        for b in raw {
            let _ = write!(boundary, "{b:02x}");
        }
        Some(Framing {
            boundary,
            ctype,
            size,
        })
    }

    /// A part's head (the first part's has no leading CRLF).
    pub(super) fn head(&self, first: bool, range: &ByteRange) -> String {
        format!(
            "{}--{}\r\nContent-Range: {}\r\nContent-Type: {}\r\n\r\n",
            if first { "" } else { "\r\n" },
            self.boundary,
            range.content_range(self.size),
            self.ctype
        )
    }

    pub(super) fn close(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// The bytes the framing adds around `ranges` (heads are made again when sent, so
    /// none is kept: a long list of ranges costs no memory per part).
    pub(super) fn overhead(&self, ranges: &[ByteRange]) -> u64 {
        let heads: usize = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| self.head(i == 0, r).len())
            .sum();
        (heads + self.close().len()) as u64
    }
}

/// A file's bytes as a body, read chunk by chunk as the client takes them (never whole
/// into memory), ending after the length announced in `Content-Length`: the whole file,
/// one range of it, or several in their multipart framing.
pub struct FileBody {
    file: tokio::fs::File,
    /// The file's cursor: a range that starts elsewhere is sought first.
    pos: u64,
    seeking: bool,
    /// The ranges still to send; the front one may be partly sent.
    ranges: VecDeque<ByteRange>,
    /// With several ranges: a part's head is due before each range, and the closing
    /// boundary after the last.
    framing: Option<Framing>,
    head_due: bool,
    first: bool,
    remaining: u64,
    buf: Box<[u8]>,
}

impl FileBody {
    pub(super) fn new(file: File, ranges: Vec<ByteRange>, framing: Option<Framing>) -> FileBody {
        let data = ranges.iter().fold(0u64, |sum, r| sum.saturating_add(r.len));
        let framed = framing.as_ref().map_or(0, |f| f.overhead(&ranges));
        let largest = ranges.iter().map(|r| r.len).max().unwrap_or(0);
        let chunk = usize::try_from(largest).map_or(CHUNK, |l| l.min(CHUNK));
        FileBody {
            file: tokio::fs::File::from_std(file),
            pos: 0,
            seeking: false,
            ranges: ranges.into(),
            head_due: framing.is_some(),
            framing,
            first: true,
            remaining: data.saturating_add(framed),
            buf: vec![0; chunk].into_boxed_slice(),
        }
    }

    /// The bytes still to be sent.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    pub(super) fn data(&mut self, text: String) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.remaining = self.remaining.saturating_sub(text.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.head_due {
                this.head_due = false;
                let text = match (&this.framing, this.ranges.front()) {
                    (Some(f), Some(range)) => f.head(std::mem::take(&mut this.first), range),
                    (Some(f), None) => f.close(),
                    (None, _) => continue,
                };
                return this.data(text);
            }
            let Some(range) = this.ranges.front_mut() else {
                return Poll::Ready(None);
            };
            if range.len == 0 {
                this.ranges.pop_front();
                this.head_due = this.framing.is_some();
                continue;
            }
            if this.pos != range.start {
                let mut file = Pin::new(&mut this.file);
                if !this.seeking {
                    if let Err(e) = file.as_mut().start_seek(SeekFrom::Start(range.start)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.seeking = true;
                }
                match file.poll_complete(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(at)) if at != range.start => {
                        return Poll::Ready(Some(Err(io::Error::other(format!(
                            "seeking to {} ended at {at}",
                            range.start
                        )))));
                    }
                    Poll::Ready(Ok(at)) => {
                        this.seeking = false;
                        this.pos = at;
                    }
                }
            }
            let want = usize::try_from(range.len).map_or(this.buf.len(), |r| r.min(this.buf.len()));
            let mut buf = ReadBuf::new(&mut this.buf[..want]);
            return match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                // The file shrank after its length was sent: end with an error, so the
                // client sees a truncated response rather than a short "complete" one.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while being sent",
                    ))))
                }
                Poll::Ready(Ok(())) => {
                    let data = Bytes::copy_from_slice(buf.filled());
                    let n = data.len() as u64;
                    this.pos += n;
                    range.start += n;
                    range.len -= n;
                    this.remaining = this.remaining.saturating_sub(n);
                    if range.len == 0 {
                        this.ranges.pop_front();
                        this.head_due = this.framing.is_some();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
