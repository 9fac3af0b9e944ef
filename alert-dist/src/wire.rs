//! The Confluent wire format: one magic byte `0`, the schema id as a 4-byte
//! big-endian integer, then the Avro binary encoding of the datum.
//!
//! Schema ids follow Rubin's convention: `major × 100 + minor`, so `lsst.v11_0`-shaped
//! alerts carry id 1100.

use thiserror::Error;

/// The Confluent magic byte.
pub const MAGIC: u8 = 0;
/// Length of the Confluent header.
pub const HEADER_LEN: usize = 5;

/// A schema id from a (major, minor) version: `major × 100 + minor`.
pub const fn schema_id(major: u32, minor: u32) -> u32 {
    major * 100 + minor
}

/// Why a message is not in the Confluent wire format.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than five bytes.
    #[error("message of {0} bytes is shorter than the 5-byte Confluent header")]
    Short(usize),
    /// The first byte is not 0.
    #[error("magic byte is {0}, expected 0 (not Confluent wire format)")]
    Magic(u8),
}

/// Writes the header for `id` followed by `body` into `out`.
pub fn frame_into(id: u32, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
}

/// Splits a framed message into its schema id and Avro body.
pub fn unframe(msg: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Short(msg.len()));
    }
    if msg[0] != MAGIC {
        return Err(WireError::Magic(msg[0]));
    }
    let id = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]);
    Ok((id, &msg[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_headers_are_refused() {
        let mut m = Vec::new();
        frame_into(schema_id(11, 0), b"avro", &mut m);
        assert_eq!(&m[..5], &[0, 0, 0, 0x04, 0x4c]);
        assert_eq!(unframe(&m), Ok((1100, &b"avro"[..])));
        assert_eq!(unframe(&m[..4]), Err(WireError::Short(4)));
        m[0] = 1;
        assert_eq!(unframe(&m), Err(WireError::Magic(1)));
    }
}
