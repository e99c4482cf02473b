//! Encoding frames into a caller-owned buffer.
//!
//! Frames are appended to a `Vec<u8>` that may already hold other frames, so that a writer can
//! coalesce everything queued into one write. On any error the buffer is restored to the length
//! it had, so one bad value never corrupts the frames around it.

use super::LEN_PREFIX;
use serde::Serialize;

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    /// serde (through postcard) refused the value.
    #[error("cannot encode the value: {0}")]
    Serde(#[from] postcard::Error),
    /// The encoded body is larger than the configured frame limit.
    #[error("encoded size {size} bytes exceeds the frame limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Appends one frame holding only `header`.
pub(crate) fn encode_header<H: Serialize>(
    buf: &mut Vec<u8>,
    header: &H,
    max_frame: usize,
) -> Result<(), EncodeError> {
    encode_with(buf, max_frame, |buf| {
        postcard::to_io(header, buf)?;
        Ok(())
    })
}

/// Appends one frame holding `header` followed by the encoding of `payload`.
pub(crate) fn encode_with_payload<H: Serialize, P: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    header: &H,
    payload: &P,
    max_frame: usize,
) -> Result<(), EncodeError> {
    encode_with(buf, max_frame, |buf| {
        postcard::to_io(header, &mut *buf)?;
        postcard::to_io(payload, buf)?;
        Ok(())
    })
}

/// Appends one frame holding `header` followed by `raw`, an already encoded payload.
pub(crate) fn encode_with_raw<H: Serialize>(
    buf: &mut Vec<u8>,
    header: &H,
    raw: &[u8],
    max_frame: usize,
) -> Result<(), EncodeError> {
    encode_header_before_raw(buf, header, raw.len(), max_frame)?;
    buf.extend_from_slice(raw);
    Ok(())
}

/// Appends the length prefix and `header` of a frame whose body goes on with `raw_len` bytes
/// that the caller writes right after, so that a large payload need not be copied into `buf`.
pub(crate) fn encode_header_before_raw<H: Serialize>(
    buf: &mut Vec<u8>,
    header: &H,
    raw_len: usize,
    max_frame: usize,
) -> Result<(), EncodeError> {
    let start = buf.len();
    encode_header(buf, header, max_frame)?;
    let size = buf.len() - start - LEN_PREFIX + raw_len;
    set_length(buf, start, size, max_frame)
}

fn encode_with(
    buf: &mut Vec<u8>,
    max_frame: usize,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; LEN_PREFIX]);
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let size = buf.len() - start - LEN_PREFIX;
    set_length(buf, start, size, max_frame)
}

/// Writes `size` into the length prefix of the frame that starts at `start`, or removes that
/// frame from `buf` if `size` is over the limit.
fn set_length(
    buf: &mut Vec<u8>,
    start: usize,
    size: usize,
    max_frame: usize,
) -> Result<(), EncodeError> {
    let limit = max_frame.min(u32::MAX as usize);
    if size > limit {
        buf.truncate(start);
        return Err(EncodeError::TooLarge { size, limit });
    }
    buf[start..start + LEN_PREFIX].copy_from_slice(&(size as u32).to_le_bytes());
    Ok(())
}

/// Splits a frame body into its decoded header and the payload bytes after it.
pub(crate) fn split_body<'a, H: serde::Deserialize<'a>>(
    body: &'a [u8],
) -> Result<(H, &'a [u8]), postcard::Error> {
    postcard::take_from_bytes(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ToParent, ToWorker, WireOutcome};

    #[test]
    fn a_header_written_before_its_raw_payload_makes_the_same_frame() {
        let raw = postcard::to_stdvec(&vec![9u8; 1000]).unwrap();
        let mut whole = Vec::new();
        encode_with_raw(&mut whole, &ToWorker::Task { id: 5 }, &raw, 1 << 20).unwrap();
        let mut split = Vec::new();
        encode_header_before_raw(&mut split, &ToWorker::Task { id: 5 }, raw.len(), 1 << 20)
            .unwrap();
        split.extend_from_slice(&raw);
        assert_eq!(whole, split);
        // Too large with its payload: refused, and the buffer is left as it was.
        let mut buf = vec![1, 2, 3];
        let refused = encode_header_before_raw(&mut buf, &ToWorker::Task { id: 5 }, 2000, 1000);
        assert!(matches!(refused, Err(EncodeError::TooLarge { .. })));
        assert_eq!(buf, [1, 2, 3]);
    }

    #[test]
    fn header_and_payload_round_trip() {
        let mut buf = Vec::new();
        encode_with_payload(
            &mut buf,
            &ToWorker::Task { id: 42 },
            &(7u64, "seven"),
            1 << 20,
        )
        .unwrap();
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        let (header, payload): (ToWorker<'_>, _) = split_body(&buf[4..]).unwrap();
        assert_eq!(header, ToWorker::Task { id: 42 });
        let value: (u64, String) = postcard::from_bytes(payload).unwrap();
        assert_eq!(value, (7, "seven".to_string()));
    }

    #[test]
    fn frames_append_to_what_the_buffer_holds() {
        let mut buf = Vec::new();
        encode_header(&mut buf, &ToParent::Bye, 64).unwrap();
        let first = buf.len();
        let done = ToParent::Done {
            task: 9,
            outcome: WireOutcome::Failed(b"no"),
        };
        encode_header(&mut buf, &done, 64).unwrap();
        let (header, rest): (ToParent<'_>, _) = split_body(&buf[first + 4..]).unwrap();
        assert_eq!(header, done);
        assert!(rest.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused_and_leaves_the_buffer_as_it_was() {
        let mut buf = Vec::new();
        encode_header(&mut buf, &ToParent::Bye, 64).unwrap();
        let before = buf.clone();
        let err = encode_with_payload(&mut buf, &ToWorker::Task { id: 1 }, &vec![0u8; 100], 64)
            .unwrap_err();
        assert!(
            matches!(err, EncodeError::TooLarge { limit: 64, .. }),
            "{err}"
        );
        assert_eq!(buf, before);
    }

    struct Unencodable;
    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom(
                "this value refuses to be encoded",
            ))
        }
    }

    #[test]
    fn a_serde_failure_is_reported_and_leaves_the_buffer_as_it_was() {
        let mut buf = vec![1, 2, 3];
        let err =
            encode_with_payload(&mut buf, &ToWorker::Task { id: 1 }, &Unencodable, 64).unwrap_err();
        assert!(matches!(err, EncodeError::Serde(_)), "{err}");
        assert_eq!(buf, [1, 2, 3]);
    }
}
