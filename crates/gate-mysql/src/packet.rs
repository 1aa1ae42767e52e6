//! MySQL packet framing and the handful of payloads the gateway reads or writes.
//!
//! A packet is a 3-byte little-endian length, a sequence id and the payload; a payload of
//! 16 MiB − 1 bytes or more continues in the next packet. The relay works on *logical*
//! payloads (continuations joined) and numbers the packets it writes itself, so rewriting a
//! row (masking changes its length) never breaks the sequence the client expects.
//! `mysql_common`'s codec is not used for framing: it rejects the sequence ids a relay sees.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAX_PAYLOAD_CHUNK: usize = 0xFF_FFFF;

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// One logical packet: the first chunk's sequence id and the joined payload.
pub struct Packet {
    pub seq: u8,
    pub payload: BytesMut,
    /// How many physical packets it took (for sequence bookkeeping).
    pub chunks: u8,
}

/// Takes one logical packet off `buf` if it is complete.
pub fn try_take_packet(buf: &mut BytesMut, max_len: usize) -> Result<Option<Packet>, PacketError> {
    // Find the end of the logical packet without consuming.
    let mut pos = 0usize;
    let mut total = 0usize;
    let mut chunks = 0u8;
    loop {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], 0]) as usize;
        total += len;
        if total > max_len {
            return Err(PacketError::TooLarge(total));
        }
        if buf.len() < pos + 4 + len {
            buf.reserve(pos + 4 + len - buf.len());
            return Ok(None);
        }
        chunks = chunks.wrapping_add(1);
        pos += 4 + len;
        if len < MAX_PAYLOAD_CHUNK {
            break;
        }
    }
    let seq = buf[3];
    let mut raw = buf.split_to(pos);
    if chunks == 1 {
        raw.advance(4);
        return Ok(Some(Packet {
            seq,
            payload: raw,
            chunks,
        }));
    }
    let mut payload = BytesMut::with_capacity(total);
    while !raw.is_empty() {
        let len = u32::from_le_bytes([raw[0], raw[1], raw[2], 0]) as usize;
        payload.extend_from_slice(&raw[4..4 + len]);
        raw.advance(4 + len);
    }
    Ok(Some(Packet {
        seq,
        payload,
        chunks,
    }))
}

pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Packet, PacketError> {
    loop {
        if let Some(p) = try_take_packet(buf, max_len)? {
            return Ok(p);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(PacketError::Closed);
        }
    }
}

/// Appends `payload` as one or more packets starting at `*seq`, advancing it.
pub fn put_packet(out: &mut BytesMut, seq: &mut u8, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD_CHUNK);
        out.put_uint_le(n as u64, 3);
        out.put_u8(*seq);
        *seq = seq.wrapping_add(1);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        if n < MAX_PAYLOAD_CHUNK {
            break;
        }
    }
}

/// Reads a length-encoded integer.
pub fn lenenc_int(b: &[u8]) -> Option<(u64, usize)> {
    match *b.first()? {
        v @ 0..=0xfa => Some((v as u64, 1)),
        0xfc => Some((u16::from_le_bytes(b.get(1..3)?.try_into().ok()?) as u64, 3)),
        0xfd => Some((
            u32::from_le_bytes([*b.get(1)?, *b.get(2)?, *b.get(3)?, 0]) as u64,
            4,
        )),
        0xfe => Some((u64::from_le_bytes(b.get(1..9)?.try_into().ok()?), 9)),
        _ => None, // 0xfb is NULL in rows, 0xff an error marker
    }
}

pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xfa => out.push(v as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A length-encoded string: returns the bytes and the total encoded size.
pub fn lenenc_str(b: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = lenenc_int(b)?;
    let len = usize::try_from(len).ok()?;
    let s = b.get(n..n.checked_add(len)?)?;
    Some((s, n + len))
}

/// An ERR packet payload (protocol 4.1 layout, with SQLSTATE).
pub fn err_payload(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xff);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&state);
    p.extend_from_slice(message.as_bytes());
    p
}

/// An OK packet payload with no rows affected.
pub fn ok_payload(status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p
}

/// The error code, SQLSTATE and message of an ERR payload.
pub fn parse_err(p: &[u8]) -> (u16, String, String) {
    let code = p
        .get(1..3)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .unwrap_or(0);
    let (state, msg) = match p.get(3) {
        Some(b'#') if p.len() >= 9 => (String::from_utf8_lossy(&p[4..9]).into_owned(), &p[9..]),
        _ => ("HY000".to_string(), p.get(3..).unwrap_or(&[])),
    };
    (code, state, String::from_utf8_lossy(msg).into_owned())
}

/// True for the packet that ends a row stream: EOF, or an OK with the 0xFE header
/// (CLIENT_DEPRECATE_EOF). A row can only start with 0xFE when it is at least 16 MiB.
pub fn is_terminator(p: &[u8]) -> bool {
    p.first() == Some(&0xfe) && p.len() < MAX_PAYLOAD_CHUNK
}

/// Server status flags of an OK packet (after affected rows and last insert id).
pub fn ok_status(p: &[u8]) -> u16 {
    let mut at = 1;
    for _ in 0..2 {
        match lenenc_int(p.get(at..).unwrap_or(&[])) {
            Some((_, n)) => at += n,
            None => return 0,
        }
    }
    p.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

/// Server status flags of a terminator (EOF layout, or OK layout with deprecate-EOF).
pub fn terminator_status(p: &[u8], deprecate_eof: bool) -> u16 {
    if deprecate_eof {
        ok_status(p)
    } else {
        p.get(3..5)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
            .unwrap_or(0)
    }
}

pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// The parts of a column definition the gateway needs (the original bytes are forwarded).
#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub table: String,
    pub name: String,
    pub org_name: String,
    pub column_type: u8,
}

/// Parses a ColumnDefinition41 payload.
pub fn parse_column_def(p: &[u8]) -> Result<ColumnDef, PacketError> {
    let bad = || PacketError::Invalid("column definition");
    let mut at = 0;
    let mut next = || -> Result<&[u8], PacketError> {
        let (s, n) = lenenc_str(p.get(at..).ok_or_else(bad)?).ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let _catalog = next()?;
    let _schema = next()?;
    let table = String::from_utf8_lossy(next()?).into_owned();
    let _org_table = next()?;
    let name = String::from_utf8_lossy(next()?).into_owned();
    let org_name = String::from_utf8_lossy(next()?).into_owned();
    // fixed fields: lenenc 0x0c, charset(2), length(4), type(1), flags(2), decimals(1)
    let (_, n) = lenenc_int(p.get(at..).ok_or_else(bad)?).ok_or_else(bad)?;
    at += n;
    let column_type = *p.get(at + 6).ok_or_else(bad)?;
    Ok(ColumnDef {
        table,
        name,
        org_name,
        column_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_joins_continuations() {
        let mut out = BytesMut::new();
        let mut seq = 5;
        put_packet(&mut out, &mut seq, b"hello");
        let big = vec![7u8; MAX_PAYLOAD_CHUNK + 10];
        put_packet(&mut out, &mut seq, &big);
        assert_eq!(seq, 8, "the big payload took two packets");
        let p = try_take_packet(&mut out, 1 << 30).unwrap().unwrap();
        assert_eq!((p.seq, &p.payload[..]), (5, &b"hello"[..]));
        let p = try_take_packet(&mut out, 1 << 30).unwrap().unwrap();
        assert_eq!((p.seq, p.payload.len(), p.chunks), (6, big.len(), 2));
        assert!(try_take_packet(&mut out, 1 << 30).unwrap().is_none());
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0][..]);
        assert!(try_take_packet(&mut huge, 1000).is_err());
    }

    #[test]
    fn lenenc_round_trip_and_truncation() {
        for v in [
            0u64,
            250,
            251,
            65535,
            65536,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_lenenc_int(&mut b, v);
            assert_eq!(lenenc_int(&b), Some((v, b.len())));
            for cut in 0..b.len() {
                assert_eq!(lenenc_int(&b[..cut]), None);
            }
        }
        assert_eq!(lenenc_str(&[3, b'a', b'b']), None);
    }

    #[test]
    fn err_packets() {
        let p = err_payload(1227, "42000", "no");
        assert_eq!(parse_err(&p), (1227, "42000".into(), "no".into()));
    }
}
