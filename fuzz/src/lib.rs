//! Fuzz harnesses for Gate's untrusted-input decoders, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by the deterministic `cargo test` run in
//! `crates/gate-postgres/tests/decoder_robustness.rs`, which includes this file with
//! `#[path]`. Keep it free of dependencies beyond what `gate-postgres` itself depends on.
//!
//! Each harness takes arbitrary bytes, drives the same decoder path the gateway runs on
//! network input, and checks the result against an independent oracle. A panic (including a
//! failed `assert!`) is a finding.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use gate_core::{MaskRule, MaskStrategy, QueryType};
use gate_enforcement::{MaskPlan, Masker};
use gate_postgres::rowmask::{binary_is_text, mask_data_row};
use gate_postgres::wire::{self, Frame, Reader, WireError};
use gate_sql::SqlDialect;

/// Frame size limit used by the harnesses: small, so that length fields are exercised on
/// both sides of it.
pub const MAX_FRAME: usize = 1 << 20;

pub const STRATEGIES: [MaskStrategy; 4] = [
    MaskStrategy::Redact,
    MaskStrategy::Partial,
    MaskStrategy::Hash,
    MaskStrategy::Email,
];

/// What `try_take_frame` must do with `buf`, computed independently from the header.
#[derive(Debug, PartialEq, Eq)]
pub enum Expect {
    /// Not enough bytes yet.
    Incomplete,
    /// A frame of this total length (tag + length field + body).
    Frame(usize),
    Invalid,
    TooLarge,
}

pub fn expected_frame(buf: &[u8], max_len: usize) -> Expect {
    if buf.len() < 5 {
        return Expect::Incomplete;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Expect::Invalid;
    }
    let total = len as usize + 1;
    if total > max_len {
        Expect::TooLarge
    } else if buf.len() < total {
        Expect::Incomplete
    } else {
        Expect::Frame(total)
    }
}

/// `try_take_frame` checked against [`expected_frame`]: a frame takes exactly its own bytes
/// off the front, anything else leaves the buffer's contents alone.
pub fn take_frame_checked(buf: &mut BytesMut, max_len: usize) -> Option<Frame> {
    let before = buf.to_vec();
    let expect = expected_frame(&before, max_len);
    let got = wire::try_take_frame(buf, max_len);
    match (expect, got) {
        (Expect::Frame(total), Ok(Some(f))) => {
            assert_eq!(f.raw.len(), total);
            assert_eq!(&f.raw[..], &before[..total]);
            assert_eq!(f.tag, before[0]);
            assert_eq!(f.body(), &before[5..total]);
            assert_eq!(&buf[..], &before[total..]);
            Some(f)
        }
        (Expect::Incomplete, Ok(None)) => {
            assert_eq!(&buf[..], &before[..]);
            None
        }
        (Expect::Invalid, Err(WireError::Invalid(_)))
        | (Expect::TooLarge, Err(WireError::TooLarge(_))) => {
            assert_eq!(&buf[..], &before[..]);
            None
        }
        (expect, got) => panic!(
            "try_take_frame on {:?}: expected {expect:?}, got {:?}",
            &before[..before.len().min(16)],
            got.map(|f| f.map(|f| f.raw.len()))
        ),
    }
}

/// Polls a future once; the readers used here (`&[u8]`) never return `Pending`.
fn poll_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory reader returned Pending"),
    }
}

/// The startup phase: `read_startup_packet` on the whole input, then, as the handler does,
/// the protocol code and `parse_startup_params`. Returns the packet body when there was one.
pub fn startup(data: &[u8]) -> Option<BytesMut> {
    let mut reader = data;
    let mut buf = BytesMut::new();
    let got = poll_ready(wire::read_startup_packet(&mut reader, &mut buf));
    let expect_len =
        (data.len() >= 4).then(|| i32::from_be_bytes([data[0], data[1], data[2], data[3]]));
    let body = match (expect_len, got) {
        (None, Err(WireError::Closed)) => return None,
        (Some(len), Err(WireError::Invalid(_))) => {
            assert!(!(8..=wire::MAX_STARTUP_LEN as i32).contains(&len));
            return None;
        }
        (Some(len), Err(WireError::Closed)) => {
            assert!((8..=wire::MAX_STARTUP_LEN as i32).contains(&len));
            assert!(data.len() < len as usize);
            return None;
        }
        (Some(len), Ok(body)) => {
            let len = len as usize;
            assert!((8..=wire::MAX_STARTUP_LEN).contains(&len));
            assert_eq!(&body[..], &data[4..len]);
            // What follows the packet stays buffered for the next read.
            assert_eq!(&buf[..], &data[len..buf.len() + len]);
            body
        }
        (len, got) => panic!(
            "read_startup_packet: length {len:?}, got {:?}",
            got.map(|b| b.len())
        ),
    };
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if code >> 16 == 3 {
        startup_params(&body[4..]);
    }
    Some(body)
}

/// `parse_startup_params`, checked: every pair came from two NUL-terminated strings.
pub fn startup_params(body: &[u8]) {
    if let Ok(params) = wire::parse_startup_params(body) {
        // The terminating empty name was found, so the body holds at least one NUL per string.
        let nuls = body.iter().filter(|&&c| c == 0).count();
        assert!(nuls > 2 * params.len());
        for (k, _) in &params {
            assert!(!k.is_empty());
        }
    }
}

/// A checked `cstr`: the string has no NUL, and the reader moved past it and its NUL.
fn cstr_checked<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let before = r.remaining();
    let s = r.cstr().ok()?;
    assert!(!s.contains(&0));
    assert_eq!(before[s.len()], 0);
    assert_eq!(r.remaining().len(), before.len() - s.len() - 1);
    Some(s)
}

/// One client message body, decoded the way the relay does for its tag.
pub fn frontend_message(tag: u8, body: &[u8]) {
    let mut r = Reader::new(body);
    match tag {
        // Query: the SQL text.
        b'Q' => {
            if let Some(text) = cstr_checked(&mut r) {
                let _ = String::from_utf8_lossy(text);
            }
            let _ = Reader::new(body).cstr_utf8();
        }
        // Parse: statement name, SQL text, then the parameter types forwarded as they are.
        b'P' => {
            let (Some(_name), Some(_query)) = (cstr_checked(&mut r), cstr_checked(&mut r)) else {
                return;
            };
            let rest = r.remaining();
            let mut types = Reader::new(rest);
            if let Ok(n) = types.i16() {
                for _ in 0..n.max(0) {
                    if types.i32().is_err() {
                        break;
                    }
                }
            }
        }
        b'B' => bind(body),
        // Describe / Close: kind byte and name.
        b'D' | b'C' => {
            let _kind = r.u8();
            let _name = cstr_checked(&mut r);
        }
        // Execute: portal name and row limit.
        b'E' => {
            let _limit = cstr_checked(&mut r).map(|_portal| r.i32());
        }
        // PasswordMessage.
        b'p' => {
            let _ = r.cstr_utf8();
        }
        _ => {}
    }
}

/// `parse_bind`, checked against an independent walk of the same layout.
pub fn bind(body: &[u8]) {
    let got = wire::parse_bind(body);
    let expect = bind_oracle(body);
    match (got, expect) {
        (Ok(info), Some((portal, statement, formats))) => {
            assert_eq!(info.portal, portal);
            assert_eq!(info.statement, statement);
            assert_eq!(info.result_formats, formats);
            for i in 0..formats.len() + 2 {
                let f = wire::format_of(&info.result_formats, i);
                match formats.len() {
                    0 => assert_eq!(f, 0),
                    1 => assert_eq!(f, formats[0]),
                    n if i < n => assert_eq!(f, formats[i]),
                    _ => assert_eq!(f, 0),
                }
            }
        }
        (Err(_), None) => {}
        (got, expect) => panic!(
            "parse_bind disagrees with the oracle on {body:?}: got ok={}, expected ok={}",
            got.is_ok(),
            expect.is_some()
        ),
    }
}

type BindFields<'a> = (&'a [u8], &'a [u8], Vec<i16>);

fn bind_oracle(b: &[u8]) -> Option<BindFields<'_>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (v, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(v)
    }
    fn cstr<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let end = b.iter().position(|&c| c == 0)?;
        let v = take(b, end)?;
        take(b, 1)?;
        Some(v)
    }
    fn int16(b: &mut &[u8]) -> Option<i16> {
        take(b, 2).map(|v| i16::from_be_bytes([v[0], v[1]]))
    }
    let mut b = b;
    let portal = cstr(&mut b)?;
    let statement = cstr(&mut b)?;
    let nfmt = usize::try_from(int16(&mut b)?).ok()?;
    take(&mut b, 2 * nfmt)?;
    let nparams = usize::try_from(int16(&mut b)?).ok()?;
    for _ in 0..nparams {
        let v = take(&mut b, 4)?;
        let len = i32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        match len {
            -1 => {}
            l if l < -1 => return None,
            l => {
                take(&mut b, l as usize)?;
            }
        }
    }
    let nres = usize::try_from(int16(&mut b)?).ok()?;
    let formats = (0..nres)
        .map(|_| int16(&mut b))
        .collect::<Option<Vec<_>>>()?;
    Some((portal, statement, formats))
}

/// Client byte stream: the startup packet parsers on the whole input, then frames one by one
/// with each message decoded by tag, until the stream ends or framing fails.
pub fn pg_frontend(data: &[u8]) {
    startup(data);
    startup_params(data);
    let mut buf = BytesMut::from(data);
    while let Some(frame) = take_frame_checked(&mut buf, MAX_FRAME) {
        frontend_message(frame.tag, frame.body());
    }
}

/// `parse_row_description`, checked: three parallel vectors of the declared length.
pub fn row_description(body: &[u8]) -> Option<wire::RowDescription> {
    let d = wire::parse_row_description(body).ok()?;
    let n = i16::from_be_bytes([body[0], body[1]]);
    assert!(n >= 0);
    assert_eq!(d.names.len(), n as usize);
    assert_eq!(d.type_oids.len(), n as usize);
    assert_eq!(d.formats.len(), n as usize);
    // Each column takes a NUL-terminated name and 18 bytes of fixed fields.
    assert!(body.len() >= 2 + 19 * n as usize);
    Some(d)
}

/// `parse_error`, checked: every field is the default or a string taken from the body.
pub fn error_fields(body: &[u8]) {
    let e = wire::parse_error(body);
    let range = body.as_ptr_range();
    let from_body =
        |s: &str| range.contains(&s.as_ptr()) || s.is_empty() || s.as_ptr() == range.end;
    assert!(e.severity == "ERROR" || from_body(e.severity));
    assert!(e.code == "XX000" || from_body(e.code));
    assert!(from_body(e.message));
    for s in [e.severity, e.code, e.message] {
        assert!(!s.contains('\0'));
    }
}

/// The result shape a DataRow is masked with.
pub struct Shape {
    pub plan: MaskPlan,
    pub type_oids: Vec<u32>,
    pub formats: Vec<i16>,
}

impl Shape {
    /// Masks the columns of `names` whose bit is set in `select`, each with a strategy picked
    /// by `pick`; the rules are written the ways policies write them (case, `table.` prefix).
    pub fn build(
        names: &[String],
        type_oids: Vec<u32>,
        formats: Vec<i16>,
        select: u64,
        pick: u8,
    ) -> Shape {
        let rules: Vec<MaskRule> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| (select >> (i % 64)) & 1 == 1)
            .map(|(i, name)| {
                let column = match (i + pick as usize) % 3 {
                    0 => name.clone(),
                    1 => name.to_uppercase(),
                    _ => format!("t.{name}"),
                };
                MaskRule {
                    column,
                    strategy: STRATEGIES[(i + pick as usize) % 4],
                }
            })
            .collect();
        let plan = MaskPlan::build(&rules, names.iter().map(String::as_str));
        for (i, name) in names.iter().enumerate() {
            // A rule naming the column exactly always masks it, whatever else matches.
            let exact = rules.iter().any(|r| r.column == *name);
            assert!(
                !exact || plan.strategy_for(i).is_some(),
                "rule for {name:?} not applied"
            );
        }
        Shape {
            plan,
            type_oids,
            formats,
        }
    }
}

/// `mask_data_row`, checked against an independent decoding of input and output: unmasked
/// columns pass unchanged, NULLs stay NULL, binary non-text columns become NULL, and masked
/// columns hold exactly `Masker::mask` of the value.
pub fn data_row(body: &[u8], shape: &Shape, masker: &Masker, scratch: &mut Vec<u8>) {
    let mut out = BytesMut::from(&b"prefix"[..]);
    let got = mask_data_row(
        body,
        &shape.plan,
        &shape.type_oids,
        &shape.formats,
        masker,
        &mut out,
        scratch,
    );
    let Some((n, values)) = data_row_oracle(body) else {
        assert!(
            got.is_err(),
            "mask_data_row accepted a truncated row {body:?}"
        );
        return;
    };
    got.expect("mask_data_row rejected a well-formed row");
    assert_eq!(&out[..6], b"prefix");
    let mut rest = out.split_off(6);
    let frame = take_frame_checked(&mut rest, usize::MAX).expect("output is one whole frame");
    assert!(rest.is_empty());
    assert_eq!(frame.tag, b'D');
    let (out_n, out_values) = data_row_oracle(frame.body()).expect("output DataRow is well-formed");
    assert_eq!(out_n, n);
    assert_eq!(out_values.len(), values.len());
    let consumed: usize = 2 + out_values
        .iter()
        .map(|v| 4 + v.map_or(0, <[u8]>::len))
        .sum::<usize>();
    assert_eq!(
        consumed,
        frame.body().len(),
        "no trailing bytes in the output row"
    );
    for (i, (input, output)) in values.iter().zip(&out_values).enumerate() {
        let expected = match (input, shape.plan.strategy_for(i)) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_vec()),
            (Some(v), Some(strategy)) => {
                let binary = wire::format_of(&shape.formats, i) == 1;
                if binary && !binary_is_text(shape.type_oids.get(i).copied().unwrap_or(0)) {
                    None
                } else {
                    Some(masker.mask(strategy, v))
                }
            }
        };
        assert_eq!(output.map(<[u8]>::to_vec), expected, "column {i}");
    }
}

/// The column count and values of a DataRow body; `None` when it is truncated. Trailing
/// bytes after the last column are ignored, as the relay does.
#[allow(clippy::type_complexity)]
pub fn data_row_oracle(body: &[u8]) -> Option<(i16, Vec<Option<&[u8]>>)> {
    let (n, mut b) = body.split_first_chunk::<2>()?;
    let n = i16::from_be_bytes(*n);
    let mut values = Vec::new();
    for _ in 0..n.max(0) {
        let (len, rest) = b.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        b = rest;
        if len < 0 {
            values.push(None);
        } else {
            let (v, rest) = b.split_at_checked(len as usize)?;
            values.push(Some(v));
            b = rest;
        }
    }
    Some((n, values))
}

/// Upstream byte stream. The first bytes configure the test (which columns are masked and
/// how, the formats of the default shape); the rest is framed: RowDescription sets the shape,
/// ErrorResponse/NoticeResponse are decoded, DataRow is masked with the current shape.
pub fn pg_backend(data: &[u8]) {
    let Some((config, stream)) = data.split_first_chunk::<10>() else {
        return;
    };
    let select = u64::from_le_bytes(config[..8].try_into().unwrap());
    let pick = config[8];
    let format_bits = config[9];
    let masker = Masker::new(&config[..]);
    let default_names: Vec<String> = [
        "id", "email", "ssn", "note", "phone", "blob", "Name", "état",
    ]
    .map(String::from)
    .into();
    let default_oids = vec![23, 25, 1043, 25, 1042, 17, 19, 114];
    let default_formats = (0..4).map(|i| i16::from((format_bits >> i) & 1)).collect();
    let mut shape = Shape::build(&default_names, default_oids, default_formats, select, pick);
    let mut scratch = Vec::new();
    let mut buf = BytesMut::from(stream);
    while let Some(frame) = take_frame_checked(&mut buf, MAX_FRAME) {
        match frame.tag {
            b'T' => {
                if let Some(d) = row_description(frame.body()) {
                    // Simple-query rows use the description's formats; extended-protocol rows
                    // use Bind's, which can be fewer: exercise both.
                    let formats = if format_bits & 0x80 != 0 {
                        d.formats
                    } else {
                        d.formats
                            .into_iter()
                            .take((format_bits & 3) as usize)
                            .collect()
                    };
                    shape = Shape::build(&d.names, d.type_oids, formats, select, pick);
                }
            }
            b'E' | b'N' => error_fields(frame.body()),
            b'D' => data_row(frame.body(), &shape, &masker, &mut scratch),
            _ => {}
        }
    }
}

/// `analyze` on arbitrary text, both dialects: statements are trimmed slices of the input,
/// unparsable text is one `unknown` fact with the whole text, blank text gives no facts.
pub fn sql_facts(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    for dialect in [SqlDialect::Postgres, SqlDialect::Mysql] {
        let facts = gate_sql::analyze(sql, dialect);
        for f in &facts {
            assert!(
                sql.contains(&*f.statement),
                "{dialect:?}: statement {:?} is not part of {sql:?}",
                f.statement
            );
            assert_eq!(
                &*f.statement,
                f.statement.trim(),
                "{dialect:?}: statement not trimmed"
            );
            for t in &f.tables {
                assert!(!t.is_empty());
            }
            if f.query_type == QueryType::Unknown {
                assert_eq!(facts.len(), 1, "{dialect:?}: unknown is the only fact");
                assert_eq!(&*f.statement, sql.trim());
                assert!(f.tables.is_empty());
            }
        }
    }
}

/// Every strategy on arbitrary bytes, checked against the documented behaviour of each; the
/// first byte picks how much of the input is the `hash` key.
pub fn masking(data: &[u8]) {
    let (key, value) = match data.split_first() {
        Some((&k, rest)) => rest.split_at((k as usize).min(rest.len())),
        None => (&[][..], data),
    };
    let masker = Masker::new(key);
    let mut out = Vec::new();
    for strategy in STRATEGIES {
        out.clear();
        out.extend_from_slice(b"kept");
        masker.mask_into(strategy, value, &mut out);
        assert_eq!(&out[..4], b"kept", "mask_into appends");
        let masked = &out[4..];
        assert_eq!(masked, masker.mask(strategy, value));
        match strategy {
            MaskStrategy::Redact => assert_eq!(masked, b"****"),
            MaskStrategy::Hash => {
                assert_eq!(masked.len(), 16);
                assert!(
                    masked
                        .iter()
                        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                );
                // Stable: the same key and value hash the same through any masker.
                assert_eq!(masked, masker.clone().mask(strategy, value));
                assert_eq!(masked, Masker::new(key).mask(strategy, value));
            }
            MaskStrategy::Partial | MaskStrategy::Email => {
                let expected = match std::str::from_utf8(value) {
                    Ok(text) if strategy == MaskStrategy::Partial => partial_oracle(text),
                    Ok(text) => email_oracle(text),
                    Err(_) => "****".to_owned(),
                };
                assert_eq!(
                    std::str::from_utf8(masked),
                    Ok(expected.as_str()),
                    "{strategy:?} {value:?}"
                );
            }
        }
    }
}

/// `partial` as documented: keep `min(2, n / 6)` characters at each end, `*` for the rest.
fn partial_oracle(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let keep = (n / 6).min(2);
    (0..n)
        .map(|i| {
            if i < keep || i >= n - keep {
                chars[i]
            } else {
                '*'
            }
        })
        .collect()
}

/// `email` as documented: first character of the local part (up to the last `@`), `****`,
/// `@` and the domain; anything not shaped like an address is masked with `partial`.
fn email_oracle(text: &str) -> String {
    match text.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !text.chars().any(char::is_whitespace) =>
        {
            let first = local.chars().next().unwrap();
            format!("{first}****@{domain}")
        }
        _ => partial_oracle(text),
    }
}

// The MySQL harnesses depend on `gate-mysql`, which `gate-postgres` (whose test includes this
// file) does not; `crates/gate-mysql/tests/decoder_robustness.rs` includes `mysql.rs` itself.
// A test build has `cfg(test)`, the fuzz library does not.
#[cfg(not(test))]
pub mod mysql;
