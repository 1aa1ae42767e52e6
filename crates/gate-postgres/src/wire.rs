//! PostgreSQL wire framing and the few message layouts the gateway reads or writes.
//!
//! The relay frames by the 5-byte header (tag + length) and decodes only the messages it
//! intercepts; everything else is forwarded as the original bytes. Every parser here works
//! on untrusted input: bounds are checked, nothing panics, errors are [`WireError`].

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol 3.0 startup code.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Startup packets larger than this are refused, as PostgreSQL itself does.
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// One tagged message: `tag` and the body after the 4-byte length.
pub struct Frame {
    pub tag: u8,
    /// The whole message including tag and length, ready to forward unchanged.
    pub raw: BytesMut,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Takes one complete message off the front of `buf`, if there is one.
pub fn try_take_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::Invalid("message length below 4"));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(WireError::TooLarge(total));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    Ok(Some(Frame {
        tag,
        raw: buf.split_to(total),
    }))
}

/// The tag of the first message in `buf` once it is complete, without consuming anything.
pub fn peek_complete_frame(buf: &BytesMut, max_len: usize) -> Result<Option<u8>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::Invalid("message length below 4"));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(WireError::TooLarge(total));
    }
    Ok((buf.len() >= total).then_some(buf[0]))
}

/// Reads until one whole message is buffered, and returns it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Frame, WireError> {
    loop {
        if let Some(f) = try_take_frame(buf, max_len)? {
            return Ok(f);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(WireError::Closed);
        }
    }
}

/// Reads an untagged startup-phase packet (length-prefixed) and returns its body.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<BytesMut, WireError> {
    loop {
        if buf.len() >= 4 {
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
                return Err(WireError::Invalid("invalid length of startup packet"));
            }
            if buf.len() >= len as usize {
                let mut p = buf.split_to(len as usize);
                p.advance(4);
                return Ok(p);
            }
        }
        if r.read_buf(buf).await? == 0 {
            return Err(WireError::Closed);
        }
    }
}

/// A cursor over a message body with checked reads.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.b
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&v, rest) = self
            .b
            .split_first()
            .ok_or(WireError::Invalid("truncated"))?;
        self.b = rest;
        Ok(v)
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        let v = self.bytes(2)?;
        Ok(i16::from_be_bytes([v[0], v[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        let v = self.bytes(4)?;
        Ok(i32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Invalid("truncated"));
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(v)
    }

    /// A NUL-terminated string (bytes, without the NUL).
    pub fn cstr(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or(WireError::Invalid("unterminated string"))?;
        let v = &self.b[..end];
        self.b = &self.b[end + 1..];
        Ok(v)
    }

    pub fn cstr_utf8(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.cstr()?).map_err(|_| WireError::Invalid("string is not UTF-8"))
    }
}

/// Writes messages into an output buffer: `begin(tag)`, fields, `finish()` fixes the length.
pub struct MsgWriter<'a> {
    out: &'a mut BytesMut,
    start: usize,
}

impl<'a> MsgWriter<'a> {
    pub fn begin(out: &'a mut BytesMut, tag: u8) -> Self {
        out.put_u8(tag);
        let start = out.len();
        out.put_i32(0);
        MsgWriter { out, start }
    }

    /// An untagged (startup-phase) packet.
    pub fn begin_untagged(out: &'a mut BytesMut) -> Self {
        let start = out.len();
        out.put_i32(0);
        MsgWriter { out, start }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.put_u8(v);
        self
    }
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.out.put_i16(v);
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.out.put_i32(v);
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.out.put_slice(v);
        self
    }
    pub fn cstr(&mut self, v: &[u8]) -> &mut Self {
        self.out.put_slice(v);
        self.out.put_u8(0);
        self
    }
    pub fn out(&mut self) -> &mut BytesMut {
        self.out
    }

    pub fn finish(&mut self) {
        let len = (self.out.len() - self.start) as i32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends an ErrorResponse (or NoticeResponse with tag `N`).
pub fn put_error(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let mut w = MsgWriter::begin(out, b'E');
    w.u8(b'S').cstr(severity.as_bytes());
    w.u8(b'V').cstr(severity.as_bytes());
    w.u8(b'C').cstr(code.as_bytes());
    w.u8(b'M').cstr(message.replace('\0', " ").as_bytes());
    w.u8(0);
    w.finish();
}

pub fn put_ready(out: &mut BytesMut, status: u8) {
    MsgWriter::begin(out, b'Z').u8(status).finish();
}

pub fn put_auth_request(out: &mut BytesMut, code: i32) {
    MsgWriter::begin(out, b'R').i32(code).finish();
}

pub fn put_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    MsgWriter::begin(out, b'S')
        .cstr(name.as_bytes())
        .cstr(value.as_bytes())
        .finish();
}

pub fn put_backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    MsgWriter::begin(out, b'K').i32(pid).i32(secret).finish();
}

pub fn put_query(out: &mut BytesMut, sql: &str) {
    MsgWriter::begin(out, b'Q').cstr(sql.as_bytes()).finish();
}

/// The fields of an ErrorResponse / NoticeResponse body.
pub struct ErrorFields<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
}

pub fn parse_error(body: &[u8]) -> ErrorFields<'_> {
    let mut f = ErrorFields {
        severity: "ERROR",
        code: "XX000",
        message: "",
    };
    let mut r = Reader::new(body);
    while let Ok(kind) = r.u8() {
        if kind == 0 {
            break;
        }
        let Ok(v) = r.cstr() else { break };
        let v = std::str::from_utf8(v).unwrap_or("");
        match kind {
            b'V' => f.severity = v,
            b'S' if f.severity == "ERROR" => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            _ => {}
        }
    }
    f
}

/// Startup parameters as `(name, value)` pairs, in the client's order.
pub fn parse_startup_params(body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut r = Reader::new(body);
    let mut params = Vec::new();
    loop {
        let k = r.cstr()?;
        if k.is_empty() {
            break;
        }
        let v = r.cstr()?;
        params.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(params)
}

/// A RowDescription: column names, type OIDs and format codes.
pub struct RowDescription {
    pub names: Vec<String>,
    pub type_oids: Vec<u32>,
    pub formats: Vec<i16>,
}

pub fn parse_row_description(body: &[u8]) -> Result<RowDescription, WireError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    if n < 0 {
        return Err(WireError::Invalid("negative column count"));
    }
    let n = n as usize;
    let mut d = RowDescription {
        names: Vec::with_capacity(n),
        type_oids: Vec::with_capacity(n),
        formats: Vec::with_capacity(n),
    };
    for _ in 0..n {
        d.names
            .push(String::from_utf8_lossy(r.cstr()?).into_owned());
        r.i32()?; // table oid
        r.i16()?; // column attribute number
        d.type_oids.push(r.i32()? as u32);
        r.i16()?; // type size
        r.i32()?; // type modifier
        d.formats.push(r.i16()?);
    }
    Ok(d)
}

/// The result-column format codes requested by a Bind message (0, 1 or n entries).
pub struct BindInfo<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub result_formats: Vec<i16>,
}

pub fn parse_bind(body: &[u8]) -> Result<BindInfo<'_>, WireError> {
    let mut r = Reader::new(body);
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let nfmt = r.i16()?;
    if nfmt < 0 {
        return Err(WireError::Invalid("negative format count"));
    }
    r.bytes(nfmt as usize * 2)?;
    let nparams = r.i16()?;
    if nparams < 0 {
        return Err(WireError::Invalid("negative parameter count"));
    }
    for _ in 0..nparams {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        } else if len < -1 {
            return Err(WireError::Invalid("bad parameter length"));
        }
    }
    let nres = r.i16()?;
    if nres < 0 {
        return Err(WireError::Invalid("negative result format count"));
    }
    let mut result_formats = Vec::with_capacity(nres as usize);
    for _ in 0..nres {
        result_formats.push(r.i16()?);
    }
    Ok(BindInfo {
        portal,
        statement,
        result_formats,
    })
}

/// The format of result column `i` given Bind's result format codes.
pub fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_reject_bad_lengths() {
        let mut b = BytesMut::new();
        put_query(&mut b, "select 1");
        put_ready(&mut b, b'I');
        b.extend_from_slice(&[b'Q', 0, 0]);
        let f = try_take_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(Reader::new(f.body()).cstr().unwrap(), b"select 1");
        let f = try_take_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!((f.tag, f.body()), (b'Z', &b"I"[..]));
        assert!(try_take_frame(&mut b, 1 << 20).unwrap().is_none());
        assert_eq!(
            peek_complete_frame(&b, 1 << 20).unwrap(),
            None,
            "partial frame"
        );
        let mut whole = BytesMut::new();
        put_ready(&mut whole, b'I');
        assert_eq!(peek_complete_frame(&whole, 1 << 20).unwrap(), Some(b'Z'));
        assert_eq!(whole.len(), 6, "peeking consumes nothing");
        let mut bad = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(try_take_frame(&mut bad, 1 << 20).is_err());
        let mut big = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert!(matches!(
            try_take_frame(&mut big, 1 << 20),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn parsers_never_panic_on_truncation() {
        let mut b = BytesMut::new();
        let mut w = MsgWriter::begin(&mut b, b'B');
        w.cstr(b"p")
            .cstr(b"s")
            .i16(1)
            .i16(0)
            .i16(1)
            .i32(3)
            .bytes(b"abc")
            .i16(1)
            .i16(1);
        w.finish();
        let info = parse_bind(&b[5..]).unwrap();
        assert_eq!(info.result_formats, vec![1]);
        for cut in 5..b.len() {
            let _ = parse_bind(&b[5..cut]);
            let _ = parse_row_description(&b[5..cut]);
            let _ = parse_error(&b[5..cut]);
        }
    }
}
