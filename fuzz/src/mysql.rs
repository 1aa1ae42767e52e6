//! Fuzz harnesses for the MySQL handler's decoders (`gate_mysql::packet`, `gate_mysql::rows`,
//! and `mysql_common`'s HandshakeResponse parser as `login()` calls it), shared by the
//! cargo-fuzz targets `mysql_client` / `mysql_server` and by the deterministic `cargo test`
//! run in `crates/gate-mysql/tests/decoder_robustness.rs`, which includes this file with
//! `#[path]`. Keep it free of dependencies beyond what `gate-mysql` itself depends on (so no
//! `gate-postgres`, and nothing from `lib.rs`).
//!
//! As in `lib.rs`: arbitrary bytes in, the gateway's own decoder path, an independent oracle;
//! a panic (including a failed `assert!`) is a finding.

use bytes::BytesMut;
use gate_core::{MaskRule, MaskStrategy};
use gate_enforcement::{MaskPlan, Masker};
use gate_mysql::packet::{self, MAX_PAYLOAD_CHUNK, Packet, PacketError};
use gate_mysql::rows;
use gate_mysql::upstream::relayable;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse;
use mysql_common::proto::MySerialize;

/// Packet size limit of the client harness: small, so that the length check is exercised on
/// both sides of it by fuzz-sized inputs (the login phase uses 64 KiB, the relay 256 MiB).
pub const MAX_CLIENT_PACKET: usize = 1 << 11;
/// Packet size limit of the upstream harness.
pub const MAX_SERVER_PACKET: usize = 1 << 16;

pub const STRATEGIES: [MaskStrategy; 4] = [
    MaskStrategy::Redact,
    MaskStrategy::Partial,
    MaskStrategy::Hash,
    MaskStrategy::Email,
];

/// What `try_take_packet` must do with `buf`, computed independently from the headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Expect {
    Incomplete,
    /// The logical packet: first sequence id, joined payload, chunk count, bytes taken.
    Packet(u8, Vec<u8>, usize, usize),
    TooLarge,
}

/// Walks the chunks of the first logical packet: a chunk of exactly 16 MiB − 1 bytes is
/// continued by the next one; the running payload size is checked against `max_len` as soon
/// as a header is seen.
pub fn expected_packet(buf: &[u8], max_len: usize) -> Expect {
    let mut payload = Vec::new();
    let mut rest = buf;
    let mut chunks = 0;
    loop {
        let Some((header, body)) = rest.split_first_chunk::<4>() else {
            return Expect::Incomplete;
        };
        let len = header[0] as usize | (header[1] as usize) << 8 | (header[2] as usize) << 16;
        if payload.len() + len > max_len {
            return Expect::TooLarge;
        }
        let Some((chunk, after)) = body.split_at_checked(len) else {
            return Expect::Incomplete;
        };
        payload.extend_from_slice(chunk);
        chunks += 1;
        rest = after;
        if len != MAX_PAYLOAD_CHUNK {
            return Expect::Packet(buf[3], payload, chunks, buf.len() - rest.len());
        }
    }
}

/// `try_take_packet` checked against [`expected_packet`]: a packet takes exactly its own
/// bytes off the front, anything else leaves the buffer's contents alone.
pub fn take_packet_checked(buf: &mut BytesMut, max_len: usize) -> Option<Packet> {
    let before = buf.to_vec();
    let expect = expected_packet(&before, max_len);
    let got = packet::try_take_packet(buf, max_len);
    match (expect, got) {
        (Expect::Packet(seq, payload, chunks, taken), Ok(Some(p))) => {
            assert_eq!(p.seq, seq);
            assert_eq!(&p.payload[..], &payload[..]);
            assert_eq!(p.chunks as usize, chunks % 256);
            assert_eq!(&buf[..], &before[taken..]);
            Some(p)
        }
        (Expect::Incomplete, Ok(None)) | (Expect::TooLarge, Err(PacketError::TooLarge(_))) => {
            assert_eq!(&buf[..], &before[..]);
            None
        }
        (expect, got) => panic!(
            "try_take_packet on {:?}: expected {:?}, got {:?}",
            &before[..before.len().min(16)],
            match expect {
                Expect::Packet(seq, p, chunks, taken) =>
                    format!("{seq} {} {chunks} {taken}", p.len()),
                e => format!("{e:?}"),
            },
            got.map(|p| p.map(|p| (p.seq, p.payload.len(), p.chunks)))
        ),
    }
}

/// Re-frames a payload with `put_packet` starting at its own sequence id: the sequence advances
/// by the packet's chunk count, and the packets read back as the same payload. Where the
/// original chunks were numbered consecutively (always, for one chunk) the bytes are the same.
pub fn reframe(p: &Packet, original: &[u8]) {
    let mut out = BytesMut::from(&b"xy"[..]);
    let mut seq = p.seq;
    packet::put_packet(&mut out, &mut seq, &p.payload);
    assert_eq!(&out[..2], b"xy", "put_packet appends");
    let mut framed = out.split_off(2);
    assert_eq!(seq, p.seq.wrapping_add(p.chunks));
    // The same chunking, numbered from the first sequence id.
    let mut renumbered = original.to_vec();
    let (mut at, mut k) = (0, 0u8);
    while at < renumbered.len() {
        renumbered[at + 3] = p.seq.wrapping_add(k);
        let len = u32::from_le_bytes([renumbered[at], renumbered[at + 1], renumbered[at + 2], 0]);
        at += 4 + len as usize;
        k = k.wrapping_add(1);
    }
    assert_eq!(&framed[..], &renumbered[..]);
    let back = take_packet_checked(&mut framed, usize::MAX).expect("one whole packet");
    assert!(framed.is_empty());
    assert_eq!((back.seq, back.chunks), (p.seq, p.chunks));
    assert_eq!(back.payload, p.payload);
}

/// The capabilities the gateway offers in its greeting, for some upstream capabilities
/// (`login()`: what the upstream can relay plus the flags Gate always sets).
pub fn offered_caps(upstream: CapabilityFlags, tls: bool) -> CapabilityFlags {
    let mut caps = relayable(upstream)
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_LONG_PASSWORD;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    caps
}

/// A HandshakeResponse as `login()` parses it: the first four bytes (the client's
/// capabilities) masked with what the greeting offered, then `mysql_common`'s parser. Checked:
/// the parsed capabilities are the masked ones, strings are NUL-free, and serializing the
/// response and parsing it again gives the same response.
pub fn handshake_response(payload: &[u8], offered: CapabilityFlags) {
    let mut payload = payload.to_vec();
    let mut masked = None;
    if payload.len() >= 4 {
        let caps = u32::from_le_bytes(payload[..4].try_into().unwrap()) & offered.bits();
        payload[..4].copy_from_slice(&caps.to_le_bytes());
        masked = Some(caps);
    }
    let Ok(response) = ParseBuf(&payload).parse::<HandshakeResponse>(()) else {
        return;
    };
    let caps = masked.expect("a response has at least the fixed 32 bytes");
    assert!(payload.len() >= 32);
    assert_eq!(
        response.capabilities(),
        CapabilityFlags::from_bits_truncate(caps)
    );
    // What login() reads.
    assert!(!response.user().contains(&0));
    let _user = String::from_utf8_lossy(response.user());
    let _collation = response.collation();
    if let Some(db) = response.db_name() {
        assert!(!db.contains(&0));
        assert!(caps & CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits() != 0);
    }
    let _ = response.scramble_buf();
    let _ = response.auth_plugin();
    let _ = response.connect_attributes();
    let mut again = Vec::new();
    response.serialize(&mut again);
    let reparsed = ParseBuf(&again)
        .parse::<HandshakeResponse>(())
        .expect("a serialized HandshakeResponse parses");
    assert_eq!(reparsed, response);
}

/// Client byte stream: packets one by one (limit [`MAX_CLIENT_PACKET`]) until the stream ends
/// or a packet is too large; each is re-framed, and parsed as a HandshakeResponse with the
/// capabilities of a few greetings.
pub fn mysql_client(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    while let Some(p) = take_packet_checked(&mut buf, MAX_CLIENT_PACKET) {
        let taken = data.len() - offset - buf.len();
        reframe(&p, &data[offset..offset + taken]);
        offset += taken;
        handshake_response(&p.payload, offered_caps(CapabilityFlags::all(), true));
        handshake_response(&p.payload, offered_caps(CapabilityFlags::empty(), false));
        // Unmasked: whatever the client claims.
        handshake_response(&p.payload, CapabilityFlags::all());
        // COM_QUERY: the SQL text as the relay reads it.
        if p.payload.first() == Some(&0x03) {
            let _ = String::from_utf8_lossy(&p.payload[1..]);
        }
    }
}

/// A length-encoded integer, independently: `(value, size)`; `None` for 0xFB / 0xFF and
/// truncation.
pub fn lenenc_oracle(b: &[u8]) -> Option<(u64, usize)> {
    let width = match *b.first()? {
        0..=0xfa => return Some((b[0] as u64, 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = b.get(1..1 + width)?;
    let v = bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | x as u64);
    Some((v, 1 + width))
}

/// A length-encoded string: `(bytes, total size)`.
pub fn lenenc_str_oracle(b: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = lenenc_oracle(b)?;
    let end = usize::try_from(len).ok()?.checked_add(n)?;
    Some((b.get(n..end)?, end))
}

/// `lenenc_int` / `lenenc_str` / `put_lenenc_int` checked against the oracle and each other.
pub fn lenenc(b: &[u8]) {
    let got = packet::lenenc_int(b);
    assert_eq!(
        got,
        lenenc_oracle(b),
        "lenenc_int {:?}",
        &b[..b.len().min(9)]
    );
    assert_eq!(packet::lenenc_str(b), lenenc_str_oracle(b));
    if let Some((v, _)) = got {
        let mut out = vec![0xaa];
        packet::put_lenenc_int(&mut out, v);
        assert_eq!(out[0], 0xaa, "put_lenenc_int appends");
        // The shortest encoding, which reads back as the same value.
        assert_eq!(packet::lenenc_int(&out[1..]), Some((v, out.len() - 1)));
        let shortest = match v {
            0..=0xfa => 1,
            0xfb..=0xffff => 3,
            0x1_0000..=0xff_ffff => 4,
            _ => 9,
        };
        assert_eq!(out.len() - 1, shortest);
    }
}

/// The status helpers and `parse_err`, checked on any payload.
pub fn statuses(p: &[u8]) {
    let (code, state, message) = packet::parse_err(p);
    if p.len() >= 3 {
        assert_eq!(code, u16::from_le_bytes([p[1], p[2]]));
    } else {
        assert_eq!(code, 0);
    }
    if p.get(3) == Some(&b'#') && p.len() >= 9 {
        assert_eq!(state, String::from_utf8_lossy(&p[4..9]));
        assert_eq!(message, String::from_utf8_lossy(&p[9..]));
    } else {
        assert_eq!(state, "HY000");
        assert_eq!(message, String::from_utf8_lossy(p.get(3..).unwrap_or(&[])));
    }
    // OK: header, affected rows, last insert id, status.
    let ok = (|| {
        let (_, a) = lenenc_oracle(p.get(1..)?)?;
        let (_, b) = lenenc_oracle(p.get(1 + a..)?)?;
        let s = p.get(1 + a + b..3 + a + b)?;
        Some(u16::from_le_bytes([s[0], s[1]]))
    })()
    .unwrap_or(0);
    assert_eq!(packet::ok_status(p), ok);
    assert_eq!(packet::terminator_status(p, true), ok);
    let eof = p.get(3..5).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]));
    assert_eq!(packet::terminator_status(p, false), eof);
    assert_eq!(
        packet::is_terminator(p),
        p.first() == Some(&0xfe) && p.len() < MAX_PAYLOAD_CHUNK
    );
}

/// The fields of a ColumnDefinition41 the gateway uses, independently.
#[allow(clippy::type_complexity)]
pub fn column_def_oracle(p: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>, u8)> {
    let mut at = 0;
    let mut strings = Vec::new();
    for _ in 0..6 {
        let (s, n) = lenenc_str_oracle(p.get(at..)?)?;
        strings.push(s);
        at += n;
    }
    // The length of the fixed fields (0x0C), whatever it says, then charset(2) length(4) type.
    let (_, n) = lenenc_oracle(p.get(at..)?)?;
    let ty = *p.get(at + n + 6)?;
    Some((
        strings[2].to_vec(),
        strings[4].to_vec(),
        strings[5].to_vec(),
        ty,
    ))
}

/// `parse_column_def`, checked against [`column_def_oracle`].
pub fn column_def(p: &[u8]) -> Option<packet::ColumnDef> {
    let got = packet::parse_column_def(p);
    match (got, column_def_oracle(p)) {
        (Ok(d), Some((table, name, org_name, ty))) => {
            assert_eq!(d.table, String::from_utf8_lossy(&table));
            assert_eq!(d.name, String::from_utf8_lossy(&name));
            assert_eq!(d.org_name, String::from_utf8_lossy(&org_name));
            assert_eq!(d.column_type, ty);
            Some(d)
        }
        (Err(_), None) => None,
        (got, expect) => panic!(
            "parse_column_def on {p:?}: got {:?}, expected {expect:?}",
            got.ok()
        ),
    }
}

/// A mask plan for column definitions the way the relay builds one: the columns whose bit
/// is set in `select` get a rule (spelled as policies spell them, by `pick`), planned on the
/// reported names and, when an alias differs, also on the original names.
pub fn plan_for(defs: &[packet::ColumnDef], select: u64, pick: u8) -> MaskPlan {
    let rules: Vec<MaskRule> = defs
        .iter()
        .enumerate()
        .filter(|(i, _)| (select >> (i % 64)) & 1 == 1)
        .map(|(i, d)| {
            let base = if (i + pick as usize) % 5 == 4 && !d.org_name.is_empty() {
                &d.org_name
            } else {
                &d.name
            };
            let column = match (i + pick as usize) % 3 {
                0 => base.clone(),
                1 => base.to_uppercase(),
                _ => format!("{}.{base}", d.table),
            };
            MaskRule {
                column,
                strategy: STRATEGIES[(i + pick as usize / 3) % 4],
            }
        })
        .collect();
    let by_name = MaskPlan::build(&rules, defs.iter().map(|d| d.name.as_str()));
    let plan = if defs
        .iter()
        .any(|d| !d.org_name.is_empty() && d.org_name != d.name)
    {
        let originals = defs.iter().map(|d| {
            if d.org_name.is_empty() {
                d.name.as_str()
            } else {
                d.org_name.as_str()
            }
        });
        by_name.union(&MaskPlan::build(&rules, originals))
    } else {
        by_name
    };
    for (i, d) in defs.iter().enumerate() {
        // A rule naming the column exactly always masks it.
        if rules.iter().any(|r| r.column == d.name) {
            assert!(
                plan.strategy_for(i).is_some(),
                "rule for {:?} not applied",
                d.name
            );
        }
    }
    plan
}

/// The values of a text row (`None` for NULL); `None` when it does not parse.
pub fn text_row_oracle(p: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut values = Vec::new();
    let mut rest = p;
    while let Some(&first) = rest.first() {
        if first == 0xfb {
            values.push(None);
            rest = &rest[1..];
        } else {
            let (v, n) = lenenc_str_oracle(rest)?;
            values.push(Some(v));
            rest = &rest[n..];
        }
    }
    Some(values)
}

/// `mask_text_row`, checked: it fails exactly on rows that do not parse; the output parses as
/// the same number of columns, NULLs where they were, unmasked values unchanged, masked ones
/// exactly `Masker::mask` of the value.
pub fn text_row(p: &[u8], plan: &MaskPlan, masker: &Masker, scratch: &mut Vec<u8>) {
    let mut out = b"stale".to_vec();
    let got = rows::mask_text_row(p, plan, masker, &mut out, scratch);
    let Some(values) = text_row_oracle(p) else {
        assert!(got.is_err(), "mask_text_row accepted {p:?}");
        return;
    };
    got.expect("mask_text_row rejected a well-formed row");
    let masked = text_row_oracle(&out).expect("the masked row parses");
    assert_eq!(masked.len(), values.len());
    for (i, (input, output)) in values.iter().zip(&masked).enumerate() {
        let expected = match (input, plan.strategy_for(i)) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_vec()),
            (Some(v), Some(strategy)) => Some(masker.mask(strategy, v)),
        };
        assert_eq!(output.map(<[u8]>::to_vec), expected, "column {i}");
    }
}

/// Size of a binary-protocol value of `column_type` at the start of `b`, independently;
/// `None` for unknown types and truncated lengths.
pub fn binary_value_len(column_type: u8, b: &[u8]) -> Option<usize> {
    match column_type {
        0 | 15 | 16 | 245..=255 => lenenc_str_oracle(b).map(|(_, n)| n),
        6 => Some(0),
        1 => Some(1),
        2 | 13 => Some(2),
        3 | 4 | 9 => Some(4),
        5 | 8 => Some(8),
        7 | 10 | 11 | 12 | 17 | 18 | 19 => b.first().map(|&n| 1 + n as usize),
        _ => None,
    }
}

/// A binary row: the NULL bitmap and each column's raw value (`None` for NULL); `None` when
/// the row does not parse with these column types (trailing bytes included).
#[allow(clippy::type_complexity)]
pub fn binary_row_oracle<'a>(
    p: &'a [u8],
    types: &[u8],
) -> Option<(&'a [u8], Vec<Option<&'a [u8]>>)> {
    let bitmap_len = (types.len() + 2).div_ceil(8);
    let (&0, rest) = p.split_first()? else {
        return None;
    };
    let (bitmap, mut rest) = rest.split_at_checked(bitmap_len)?;
    let mut values = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] >> (bit % 8) & 1 == 1 {
            values.push(None);
            continue;
        }
        let (v, after) = rest.split_at_checked(binary_value_len(ty, rest)?)?;
        values.push(Some(v));
        rest = after;
    }
    rest.is_empty().then_some((bitmap, values))
}

/// `mask_binary_row`, checked: it fails exactly on rows that do not parse; the output has the
/// same NULL bitmap plus the bits of masked non-string columns, unmasked values unchanged,
/// masked strings exactly `Masker::mask` of the value.
pub fn binary_row(p: &[u8], plan: &MaskPlan, types: &[u8], masker: &Masker, scratch: &mut Vec<u8>) {
    let mut out = b"stale".to_vec();
    let got = rows::mask_binary_row(p, plan, types, masker, &mut out, scratch);
    let Some((bitmap, values)) = binary_row_oracle(p, types) else {
        assert!(
            got.is_err(),
            "mask_binary_row accepted {p:?} with types {types:?}"
        );
        return;
    };
    got.expect("mask_binary_row rejected a well-formed row");
    let mut expected_bitmap = bitmap.to_vec();
    let mut expected_values = Vec::new();
    for (i, (v, &ty)) in values.iter().zip(types).enumerate() {
        let bit = i + 2;
        match (v, plan.strategy_for(i)) {
            (None, _) => {}
            (Some(v), None) => expected_values.extend_from_slice(v),
            (Some(v), Some(strategy)) if rows::binary_is_string(ty) => {
                let (text, _) = lenenc_str_oracle(v).unwrap();
                let m = masker.mask(strategy, text);
                packet::put_lenenc_int(&mut expected_values, m.len() as u64);
                expected_values.extend_from_slice(&m);
            }
            (Some(_), Some(_)) => expected_bitmap[bit / 8] |= 1 << (bit % 8),
        }
    }
    let (out_bitmap, out_values) = binary_row_oracle(&out, types).expect("the masked row parses");
    assert_eq!(out_bitmap, &expected_bitmap[..]);
    assert_eq!(&out[1 + bitmap.len()..], &expected_values[..]);
    for (i, (input, output)) in values.iter().zip(&out_values).enumerate() {
        if plan.strategy_for(i).is_none() {
            assert_eq!(input, output, "unmasked column {i}");
        }
    }
}

/// Where the upstream harness is in a response.
enum State {
    /// Expecting OK, ERR, LOCAL INFILE or a column count.
    Idle,
    /// Column definitions still to come.
    Columns(u64),
    /// The EOF after the definitions (without CLIENT_DEPRECATE_EOF).
    ColumnsEof,
    Rows,
}

/// Upstream byte stream. The first 10 bytes configure the run: which columns are masked
/// (8 bytes), how rules are spelled and which strategies (1 byte), and flags (CLIENT_DEPRECATE_EOF,
/// text or binary rows, whether every packet also goes through every decoder). The rest is
/// split into packets and followed through a response as the relay does: OK / ERR / column
/// count, column definitions (a new plan over their names, types for binary rows), EOF, rows
/// masked with the current plan, and the terminator.
pub fn mysql_server(data: &[u8]) {
    let Some((config, stream)) = data.split_first_chunk::<10>() else {
        return;
    };
    let select = u64::from_le_bytes(config[..8].try_into().unwrap());
    let pick = config[8];
    let flags = config[9];
    let deprecate_eof = flags & 1 != 0;
    let binary = flags & 2 != 0;
    let everything = flags & 4 != 0;
    let masker = Masker::new(&config[..]);
    let mut scratch = Vec::new();
    let mut state = State::Idle;
    let mut defs: Vec<packet::ColumnDef> = Vec::new();
    let mut plan = MaskPlan::empty();
    let mut types: Vec<u8> = Vec::new();
    let mut buf = BytesMut::from(stream);
    while let Some(p) = take_packet_checked(&mut buf, MAX_SERVER_PACKET) {
        let p = &p.payload[..];
        if everything {
            statuses(p);
            lenenc(p);
            column_def(p);
            text_row(p, &plan, &masker, &mut scratch);
            binary_row(p, &plan, &types, &masker, &mut scratch);
        }
        state = match state {
            State::Idle => match p.first() {
                Some(0x00 | 0xff | 0xfb) | None => {
                    statuses(p);
                    State::Idle
                }
                Some(_) => match lenenc_oracle(p) {
                    Some((count, _)) => {
                        lenenc(p);
                        defs.clear();
                        if count == 0 {
                            State::Idle
                        } else {
                            State::Columns(count)
                        }
                    }
                    None => State::Idle,
                },
            },
            State::Columns(left) => match column_def(p) {
                Some(d) => {
                    defs.push(d);
                    if left > 1 {
                        State::Columns(left - 1)
                    } else {
                        plan = plan_for(&defs, select, pick);
                        types = defs.iter().map(|d| d.column_type).collect();
                        if deprecate_eof {
                            State::Rows
                        } else {
                            State::ColumnsEof
                        }
                    }
                }
                // The relay drops the connection on a bad definition; start over.
                None => State::Idle,
            },
            State::ColumnsEof => {
                statuses(p);
                State::Rows
            }
            State::Rows => {
                if p.first() == Some(&0xff) || packet::is_terminator(p) {
                    statuses(p);
                    State::Idle
                } else {
                    if binary {
                        binary_row(p, &plan, &types, &masker, &mut scratch);
                    } else {
                        text_row(p, &plan, &masker, &mut scratch);
                    }
                    State::Rows
                }
            }
        };
    }
}
