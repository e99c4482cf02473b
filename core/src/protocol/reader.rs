//! Reading length-prefixed frames with one reusable buffer.
//!
//! The length prefix is checked against the frame limit *before* the buffer grows, so a peer
//! cannot make us allocate more than `LEN_PREFIX + max_frame` bytes. Bodies are handed out as
//! slices of the buffer, to be decoded in place.

use super::LEN_PREFIX;
use futures_io::AsyncRead;
use futures_util::AsyncReadExt;
use std::io::{self, Read};

/// Why the next frame could not be read. Each variant ends the link it happened on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix announces more than the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The link closed in the middle of a frame.
    #[error("truncated frame: the link closed after {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    /// Reading from the link failed.
    #[error("i/o error on the link: {0}")]
    Io(#[from] io::Error),
}

const INITIAL_BUFFER: usize = 64 * 1024;

/// Reads frames from an async byte stream.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
    /// Bytes read from the link so far.
    received: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame: usize) -> Self {
        Self {
            io,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            max_frame,
            received: 0,
        }
    }

    /// Changes the frame limit for the frames that follow.
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Bytes received of a frame that has not arrived whole (0 between frames).
    pub(crate) fn pending_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes read from the link so far: progress, however the frames fall.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Whether a whole frame is buffered: the next [`next`](Self::next) returns it at once.
    pub(crate) fn has_frame(&self) -> bool {
        let avail = self.end - self.start;
        avail >= LEN_PREFIX && avail - LEN_PREFIX >= self.peek_len()
    }

    fn peek_len(&self) -> usize {
        let prefix = &self.buf[self.start..self.start + LEN_PREFIX];
        u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize
    }

    /// The next frame's body, or `None` when the peer closed the link between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let body = loop {
            let avail = self.end - self.start;
            let need = if avail >= LEN_PREFIX {
                let len = self.peek_len();
                if len > self.max_frame {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                if avail >= LEN_PREFIX + len {
                    let body = self.start + LEN_PREFIX..self.start + LEN_PREFIX + len;
                    self.start = body.end;
                    break body;
                }
                LEN_PREFIX + len
            } else {
                LEN_PREFIX
            };
            self.make_room(need);
            let n = self.io.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return if avail == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated {
                        expected: need,
                        got: avail,
                    })
                };
            }
            self.end += n;
            self.received += n as u64;
        };
        if self.start == self.end {
            // Everything buffered was consumed, so the next read can start at the front; `body`
            // stays valid until then.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(&self.buf[body]))
    }

    /// Makes sure `need` bytes starting at `start` fit in the buffer, compacting or growing it.
    fn make_room(&mut self, need: usize) {
        // Only called while fewer than `need` bytes are buffered, so `end < start + need`.
        if self.start + need <= self.buf.len() {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if need > self.buf.len() {
            let doubled = (self.buf.len() * 2).min(LEN_PREFIX + self.max_frame);
            self.buf.resize(need.max(doubled), 0);
        }
    }
}

/// Reads one frame from a blocking reader (the worker's handshake, before any runtime exists).
pub(crate) fn read_frame_blocking(
    r: &mut impl Read,
    max_frame: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    read_exact_or_truncated(r, &mut prefix, LEN_PREFIX)?;
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let mut body = vec![0; len];
    read_exact_or_truncated(r, &mut body, LEN_PREFIX + len)?;
    Ok(body)
}

fn read_exact_or_truncated(
    r: &mut impl Read,
    out: &mut [u8],
    expected: usize,
) -> Result<(), FrameError> {
    let mut got = 0;
    while got < out.len() {
        match r.read(&mut out[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    expected,
                    got: expected - out.len() + got,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;
    use futures_util::io::Cursor;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn reads_back_to_back_frames_then_a_clean_end() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b""));
        bytes.extend(frame(&[7; 100_000]));
        let mut r = FrameReader::new(Cursor::new(bytes), 1 << 20);
        block_on(async {
            assert_eq!(r.next().await.unwrap().unwrap(), b"one");
            assert_eq!(r.next().await.unwrap().unwrap(), b"");
            assert_eq!(r.next().await.unwrap().unwrap(), &[7; 100_000][..]);
            assert!(r.next().await.unwrap().is_none());
        });
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let bytes = (u32::MAX).to_le_bytes().to_vec();
        let mut r = FrameReader::new(Cursor::new(bytes), 1024);
        let err = block_on(r.next()).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { max: 1024, .. }),
            "{err}"
        );
        assert!(r.buf.len() <= INITIAL_BUFFER);
    }

    #[test]
    fn a_frame_cut_short_is_truncated_not_a_clean_end() {
        let mut bytes = frame(b"0123456789");
        bytes.truncate(8);
        let mut r = FrameReader::new(Cursor::new(bytes), 1024);
        let err = block_on(r.next()).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 14,
                    got: 8
                }
            ),
            "{err}"
        );
        let mut r = FrameReader::new(Cursor::new(vec![1, 0]), 1024);
        let err = block_on(r.next()).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { got: 2, .. }), "{err}");
    }

    #[test]
    fn blocking_reader_agrees_with_the_async_one() {
        let bytes = frame(b"hello");
        assert_eq!(read_frame_blocking(&mut &bytes[..], 16).unwrap(), b"hello");
        let err = read_frame_blocking(&mut &bytes[..], 4).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 5, max: 4 }));
        let err = read_frame_blocking(&mut &bytes[..6], 16).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 9,
                    got: 6
                }
            ),
            "{err}"
        );
    }

    proptest::proptest! {
        /// However the byte stream is cut into reads, the same frames come out.
        #[test]
        fn frames_survive_any_read_boundaries(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
            chunk in 1usize..64,
        ) {
            let bytes: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
            let io = Chunked { data: bytes, pos: 0, chunk };
            let mut r = FrameReader::new(io, 1024);
            block_on(async {
                for body in &bodies {
                    proptest::prop_assert_eq!(r.next().await.unwrap().unwrap(), &body[..]);
                }
                proptest::prop_assert!(r.next().await.unwrap().is_none());
                Ok(())
            })?;
        }
    }

    /// A reader that hands out at most `chunk` bytes per read.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(n))
        }
    }
}
