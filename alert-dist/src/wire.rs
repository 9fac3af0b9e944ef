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

/// Appends the 5-byte header for schema `id`.
#[inline]
pub fn put_header(id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Writes the header for `id` followed by `body` into `out`.
pub fn frame_into(id: u32, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + body.len());
    put_header(id, out);
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

// Avro binary primitives (Avro 1.11 specification, "Binary Encoding"), shared by the
// packet encoder, the archive's container files and the tests' small datums.

/// An Avro `long` (or `int`) as bytes: zig-zag, then base-128 varint, assembled on the
/// stack; the first `len` (1–10) of the ten bytes count.
#[inline(always)]
pub fn long_bytes(v: i64) -> ([u8; 10], usize) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut b = [0u8; 10];
    let mut n = 0;
    while z >= 0x80 && n < 9 {
        b[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    // A u64 needs at most ten 7-bit groups: here z < 0x80 (n < 9) or z < 2 (n = 9).
    b[n] = z as u8;
    (b, n + 1)
}

/// Appends an Avro `long` (or `int`) ([`long_bytes`]): one push for the common
/// one-byte case, else the bytes appended at once (one capacity check, not one a byte).
#[inline]
pub fn put_long(out: &mut Vec<u8>, v: i64) {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    if z < 0x80 {
        out.push(z as u8);
        return;
    }
    let (b, len) = long_bytes(v);
    out.extend_from_slice(&b[..len]);
}

/// Appends Avro `bytes` (or `string`): the length as a `long`, then the bytes.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Reads an Avro `long` at `*pos`, advancing it; `None` when truncated or over 64 bits.
pub fn get_long(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// Reads Avro `bytes` at `*pos`, advancing it.
pub fn get_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let n = usize::try_from(get_long(buf, pos)?).ok()?;
    let s = buf.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    Some(s)
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

    #[test]
    fn avro_longs_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            let mut b = Vec::new();
            put_long(&mut b, v);
            let mut pos = 0;
            assert_eq!(get_long(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
        }
        // Spec examples: 1 -> 02, -1 -> 01, 64 -> 80 01.
        let mut b = Vec::new();
        for v in [1, -1, 64] {
            put_long(&mut b, v);
        }
        assert_eq!(b, [0x02, 0x01, 0x80, 0x01]);
    }

    /// The plain one-byte-at-a-time varint of the specification.
    fn reference_long(v: i64) -> Vec<u8> {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
        out
    }

    #[test]
    fn put_long_writes_the_reference_varint_at_every_length() {
        // Both sides of every 7-bit group boundary, positive and negative.
        let mut vals = vec![0i64, i64::MAX, i64::MIN];
        for k in 1..64 {
            let p = 1i64 << (k - 1);
            vals.extend([p - 1, p, p + 1, -p, -p - 1, -p + 1]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64; // fixed seed, xorshift
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            vals.push((x as i64) >> (x % 64));
        }
        for v in vals {
            let mut b = vec![0xaa];
            put_long(&mut b, v);
            assert_eq!(&b[1..], reference_long(v).as_slice(), "{v}");
        }
    }
}
