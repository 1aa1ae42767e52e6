//! Deterministic robustness run of the MySQL handler's decoders: packet framing, the OK / EOF /
//! ERR and column-definition parsers, text and binary row masking, and `mysql_common`'s
//! HandshakeResponse parser as `login()` uses it.
//!
//! The checks are the fuzz harnesses of `fuzz/src/mysql.rs` (the `mysql` module of the fuzz
//! library, included below, so `cargo fuzz` and `cargo test` exercise the same code with the
//! same oracles); this file feeds them a few hundred thousand pseudo-random and mutated-valid
//! inputs from fixed seeds, and checks that valid packets decode back to what was written,
//! also when the stream arrives in arbitrary pieces.

#[path = "../../../fuzz/src/mysql.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::HashMap;

use bytes::BytesMut;
use gate_core::{MaskRule, MaskStrategy};
use gate_enforcement::{MaskPlan, Masker};
use gate_mysql::packet::{self, MAX_PAYLOAD_CHUNK, put_lenenc_int};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakeResponse};
use mysql_common::proto::MySerialize;

/// xorshift64*: tiny, deterministic, good enough to pick lengths and bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Small lengths are the interesting ones; sometimes a longer one.
    fn len(&mut self) -> usize {
        if self.chance(16) {
            self.below(300)
        } else {
            self.below(24)
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// A name without NUL, ASCII or not, sometimes invalid UTF-8.
    fn name(&mut self) -> Vec<u8> {
        let n = self.len() % 12;
        let mut s: Vec<u8> = match self.below(4) {
            0 => self.bytes(n),
            1 => (0..n).map(|_| b'a' + self.below(26) as u8).collect(),
            2 => self
                .pick(&["email", "SSN", "état", "日本", "t.col", "a b", ""])
                .as_bytes()
                .to_vec(),
            _ => (0..n)
                .map(|_| *self.pick(b"aZ_.@ \t\xc3\xa9\xff"))
                .collect(),
        };
        s.retain(|&c| c != 0);
        s
    }
    /// A value for a length-encoded integer, around the encoding boundaries.
    fn lenenc_value(&mut self) -> u64 {
        let base = *self.pick(&[
            0,
            0xfa,
            0xfb,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ]);
        match self.below(3) {
            0 => base,
            1 => base.wrapping_add(self.below(3) as u64).wrapping_sub(1),
            _ => self.next() >> self.below(64),
        }
    }
}

/// Edits a valid input the ways fuzzers do: flips, truncations, insertions, length-field
/// tweaks (3-byte packet lengths, length-encoded markers), duplications.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = *rng.pick(&[0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0x7f, 1, 0x0c]);
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                let n = rng.below(6);
                let extra = rng.bytes(n);
                v.splice(i..i, extra);
            }
            4 if v.len() >= 3 => {
                // Overwrite a 3-byte field (a packet length) with a boundary value.
                let i = rng.below(v.len() - 2);
                let x: u32 = *rng.pick(&[
                    0, 1, 0xfa, 0xfb, 0x7ff, 0x800, 0x801, 0xffff, 0x1_0000, 0xff_fffe, 0xff_ffff,
                ]);
                v[i..i + 3].copy_from_slice(&x.to_le_bytes()[..3]);
            }
            5 if !v.is_empty() => {
                // A length-encoded integer with a boundary value, or a bare wide marker.
                let i = rng.below(v.len());
                let mut enc = Vec::new();
                put_lenenc_int(&mut enc, rng.lenenc_value());
                if rng.chance(3) {
                    enc.truncate(1);
                }
                let end = (i + enc.len()).min(v.len());
                v.splice(i..end, enc);
            }
            _ => {
                let a = rng.below(v.len() + 1);
                let b = a + rng.below(v.len() - a + 1);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
        }
    }
    v
}

/// Takes packets off `stream` as if it arrived in random pieces, as a socket delivers it.
fn packets_in_pieces(rng: &mut Rng, stream: &[u8], max_len: usize) -> Vec<packet::Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = 1 + rng.below(stream.len() - fed).min(rng.len());
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        while let Some(p) = harness::take_packet_checked(&mut buf, max_len) {
            packets.push(p);
        }
    }
    assert!(buf.is_empty(), "a valid stream leaves nothing behind");
    packets
}

/// A HandshakeResponse41 as a client writes it, and its user and database.
fn handshake(rng: &mut Rng) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let user = rng.name();
    let db = rng.chance(3).then(|| rng.name());
    let n = rng.below(33);
    let scramble = rng.bytes(n);
    let plugin = match rng.below(4) {
        0 => None,
        1 => Some(AuthPlugin::MysqlNativePassword),
        2 => Some(AuthPlugin::CachingSha2Password),
        _ => Some(AuthPlugin::MysqlClearPassword),
    };
    let attrs = rng.chance(2).then(|| {
        (0..rng.below(4))
            .map(|_| {
                (
                    String::from_utf8_lossy(&rng.name()).into_owned(),
                    String::from_utf8_lossy(&rng.name()).into_owned(),
                )
            })
            .collect::<HashMap<_, _>>()
    });
    let mut caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
        | CapabilityFlags::CLIENT_MULTI_RESULTS;
    caps |= *rng.pick(&[
        CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        CapabilityFlags::CLIENT_SECURE_CONNECTION,
        CapabilityFlags::empty(),
    ]);
    // Old-style (NUL-terminated) auth data cannot hold a NUL.
    let scramble: Vec<u8> = if caps.intersects(
        CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_SECURE_CONNECTION,
    ) {
        scramble.into_iter().take(255).collect()
    } else {
        scramble.into_iter().filter(|&b| b != 0).collect()
    };
    let response = HandshakeResponse::new(
        Some(scramble),
        (8, 0, 36),
        Some(user.clone()),
        db.clone(),
        plugin,
        caps,
        attrs,
        1 << 24,
    );
    let mut payload = Vec::new();
    response.serialize(&mut payload);
    (payload, user, db)
}

#[test]
fn valid_client_streams_round_trip_and_survive_mutation() {
    let mut rng = Rng::new(0x3E5D_0001);
    let mut mutated = 0;
    for round in 0..10_000 {
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut logins = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let payload = match rng.below(4) {
                0 => {
                    let (payload, user, db) = handshake(&mut rng);
                    logins.push((payloads.len(), user, db));
                    payload
                }
                1 => [&[0x03][..], &rng.name()].concat(),
                2 => vec![*rng.pick(&[0x01, 0x0e, 0x02])],
                _ => {
                    let n = rng.len();
                    rng.bytes(n)
                }
            };
            payloads.push(payload);
        }
        let first_seq = rng.byte();
        let mut seq = first_seq;
        let mut stream = BytesMut::new();
        for p in &payloads {
            packet::put_packet(&mut stream, &mut seq, p);
        }
        assert_eq!(seq, first_seq.wrapping_add(payloads.len() as u8));
        let packets = packets_in_pieces(&mut rng, &stream, harness::MAX_CLIENT_PACKET);
        assert_eq!(packets.len(), payloads.len(), "round {round}");
        for (i, (p, payload)) in packets.iter().zip(&payloads).enumerate() {
            assert_eq!(p.seq, first_seq.wrapping_add(i as u8));
            assert_eq!(p.chunks, 1);
            assert_eq!(&p.payload[..], &payload[..]);
        }
        for (i, user, db) in &logins {
            let r = ParseBuf(&payloads[*i])
                .parse::<HandshakeResponse>(())
                .expect("a client's HandshakeResponse parses");
            assert_eq!(r.user(), &user[..]);
            assert_eq!(r.db_name(), db.as_deref());
            for tls in [false, true] {
                harness::handshake_response(
                    &payloads[*i],
                    harness::offered_caps(CapabilityFlags::all(), tls),
                );
            }
        }
        let stream = stream.to_vec();
        harness::mysql_client(&stream);
        for _ in 0..12 {
            harness::mysql_client(&mutate(&mut rng, &stream));
            mutated += 1;
        }
    }
    assert_eq!(mutated, 120_000);
}

/// Column types: strings, fixed-size, temporal, and a few the binary decoder does not know.
const TYPES: [u8; 16] = [3, 8, 1, 2, 4, 5, 6, 12, 7, 10, 15, 253, 254, 252, 246, 14];

struct Column {
    table: Vec<u8>,
    name: Vec<u8>,
    org_name: Vec<u8>,
    ty: u8,
}

fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

fn column_def(c: &Column) -> Vec<u8> {
    let mut p = Vec::new();
    for s in [&b"def"[..], b"db", &c.table, b"t", &c.name, &c.org_name] {
        lenenc_str(&mut p, s);
    }
    p.push(0x0c);
    p.extend_from_slice(&33u16.to_le_bytes());
    p.extend_from_slice(&255u32.to_le_bytes());
    p.push(c.ty);
    p.extend_from_slice(&[0, 0, 0, 0, 0]);
    p
}

/// A value of `ty` in the binary protocol (`None` for the types the decoder rejects).
fn binary_value(rng: &mut Rng, ty: u8, out: &mut Vec<u8>) {
    match ty {
        0 | 15 | 16 | 245..=255 => lenenc_str(out, &rng.name()),
        1 => out.push(rng.byte()),
        2 | 13 => out.extend_from_slice(&rng.bytes(2)),
        3 | 4 | 9 => out.extend_from_slice(&rng.bytes(4)),
        5 | 8 => out.extend_from_slice(&rng.bytes(8)),
        6 => {}
        7 | 10 | 11 | 12 => {
            let n = *rng.pick(&[0u8, 4, 7, 11]);
            out.push(n);
            out.extend_from_slice(&rng.bytes(n as usize));
        }
        _ => out.extend_from_slice(&rng.bytes(3)),
    }
}

/// A row of `columns` (text or binary), with NULLs, and whether it is well-formed.
fn row(rng: &mut Rng, columns: &[Column], binary: bool) -> (Vec<u8>, bool) {
    let mut p = Vec::new();
    let mut valid = true;
    if binary {
        p.push(0x00);
        let bitmap_at = p.len();
        p.resize(p.len() + (columns.len() + 9) / 8, 0);
        for (i, c) in columns.iter().enumerate() {
            if rng.chance(4) {
                p[bitmap_at + (i + 2) / 8] |= 1 << ((i + 2) % 8);
            } else {
                valid &= harness::binary_value_len(c.ty, &[0]).is_some();
                binary_value(rng, c.ty, &mut p);
            }
        }
    } else {
        for _ in columns {
            if rng.chance(4) {
                p.push(0xfb);
            } else {
                lenenc_str(&mut p, &rng.name());
            }
        }
    }
    (p, valid)
}

/// The terminator of a row stream (or of the column definitions): EOF, or an OK with the
/// 0xFE header with CLIENT_DEPRECATE_EOF.
fn terminator(rng: &mut Rng, deprecate_eof: bool, status: u16) -> Vec<u8> {
    if deprecate_eof {
        let mut p = vec![0xfe];
        put_lenenc_int(&mut p, rng.lenenc_value());
        put_lenenc_int(&mut p, rng.lenenc_value());
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    } else {
        let mut p = vec![0xfe, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p
    }
}

#[test]
fn valid_server_streams_decode_and_survive_mutation() {
    let mut rng = Rng::new(0x3E5D_0002);
    let mut mutated = 0;
    for round in 0..6_000 {
        let mut config = rng.bytes(10);
        let deprecate_eof = config[9] & 1 != 0;
        let binary = config[9] & 2 != 0;
        if round % 2 == 0 {
            config[9] &= !4;
        }
        let columns: Vec<Column> = (0..1 + rng.below(6))
            .map(|_| Column {
                table: rng.name(),
                name: rng.name(),
                org_name: if rng.chance(2) {
                    rng.name()
                } else {
                    Vec::new()
                },
                ty: *rng.pick(&TYPES),
            })
            .collect();
        let mut payloads = Vec::new();
        if rng.chance(4) {
            payloads.push(packet::ok_payload(rng.next() as u16));
        }
        let mut count = Vec::new();
        put_lenenc_int(&mut count, columns.len() as u64);
        payloads.push(count);
        for c in &columns {
            let def = column_def(c);
            let d = harness::column_def(&def).expect("a column definition parses");
            assert_eq!(d.name, String::from_utf8_lossy(&c.name));
            assert_eq!(d.org_name, String::from_utf8_lossy(&c.org_name));
            assert_eq!(d.table, String::from_utf8_lossy(&c.table));
            assert_eq!(d.column_type, c.ty);
            payloads.push(def);
        }
        if !deprecate_eof {
            payloads.push(terminator(&mut rng, false, 0x0002));
        }
        for _ in 0..rng.below(4) {
            payloads.push(row(&mut rng, &columns, binary).0);
        }
        let status = *rng.pick(&[0x0002, 0x0008, 0x0040, 0x0022]);
        let end = terminator(&mut rng, deprecate_eof, status);
        assert!(packet::is_terminator(&end));
        assert_eq!(packet::terminator_status(&end, deprecate_eof), status);
        payloads.push(end);
        if rng.chance(4) {
            payloads.push(packet::err_payload(
                1146,
                "42S02",
                "Table 'x' doesn't exist",
            ));
        }
        let mut stream = BytesMut::from(&config[..]);
        let mut seq = 1;
        for p in &payloads {
            packet::put_packet(&mut stream, &mut seq, p);
        }
        let packets = packets_in_pieces(&mut rng, &stream[10..], harness::MAX_SERVER_PACKET);
        assert_eq!(packets.len(), payloads.len());
        let stream = stream.to_vec();
        harness::mysql_server(&stream);
        for _ in 0..12 {
            let mut m = mutate(&mut rng, &stream[10..]);
            m.splice(0..0, stream[..10].iter().copied());
            harness::mysql_server(&m);
            mutated += 1;
        }
    }
    assert_eq!(mutated, 72_000);
}

fn random_plan(rng: &mut Rng, n: usize) -> MaskPlan {
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut rules = Vec::new();
    for c in &names {
        if rng.chance(2) {
            rules.push(MaskRule {
                column: c.clone(),
                strategy: *rng.pick(&[
                    MaskStrategy::Redact,
                    MaskStrategy::Partial,
                    MaskStrategy::Hash,
                    MaskStrategy::Email,
                ]),
            });
        }
    }
    MaskPlan::build(&rules, names.iter().map(String::as_str))
}

#[test]
fn rows_are_masked_exactly() {
    let mut rng = Rng::new(0x3E5D_0003);
    let masker = Masker::new(b"decoder robustness");
    let mut scratch = Vec::new();
    let mut valid_binary = 0;
    for _ in 0..20_000 {
        let columns: Vec<Column> = (0..rng.below(12))
            .map(|_| Column {
                table: Vec::new(),
                name: Vec::new(),
                org_name: Vec::new(),
                ty: *rng.pick(&TYPES),
            })
            .collect();
        let types: Vec<u8> = columns.iter().map(|c| c.ty).collect();
        // Plans cover fewer, as many or more columns than the row has.
        let extra = rng.below(3);
        let plan = random_plan(&mut rng, columns.len() + extra);
        let (text, _) = row(&mut rng, &columns, false);
        harness::text_row(&text, &plan, &masker, &mut scratch);
        let (bin, valid) = row(&mut rng, &columns, true);
        if valid {
            let mut out = Vec::new();
            gate_mysql::rows::mask_binary_row(&bin, &plan, &types, &masker, &mut out, &mut scratch)
                .expect("a well-formed binary row is accepted");
            valid_binary += 1;
        }
        harness::binary_row(&bin, &plan, &types, &masker, &mut scratch);
        for _ in 0..4 {
            harness::text_row(&mutate(&mut rng, &text), &plan, &masker, &mut scratch);
            harness::binary_row(
                &mutate(&mut rng, &bin),
                &plan,
                &types,
                &masker,
                &mut scratch,
            );
        }
    }
    assert!(valid_binary > 10_000);
}

#[test]
fn random_bytes_never_panic_a_decoder() {
    let mut rng = Rng::new(0x3E5D_0004);
    let masker = Masker::new(b"k");
    let mut scratch = Vec::new();
    for _ in 0..60_000 {
        let n = rng.len();
        let mut input = rng.bytes(n);
        // Half the time, a plausible header so that framing gets past the length check.
        if rng.chance(2) && input.len() >= 4 {
            let len = rng.below(input.len()) as u32;
            input[..3].copy_from_slice(&len.to_le_bytes()[..3]);
        }
        harness::mysql_client(&input);
        harness::mysql_server(&input);
        harness::statuses(&input);
        harness::lenenc(&input);
        harness::column_def(&input);
        harness::handshake_response(&input, CapabilityFlags::all());
        let types: Vec<u8> = (0..rng.below(10)).map(|_| *rng.pick(&TYPES)).collect();
        let plan = random_plan(&mut rng, types.len());
        harness::text_row(&input, &plan, &masker, &mut scratch);
        harness::binary_row(&input, &plan, &types, &masker, &mut scratch);
    }
}

#[test]
fn lenenc_round_trips() {
    let mut rng = Rng::new(0x3E5D_0005);
    for _ in 0..20_000 {
        let v = rng.lenenc_value();
        let mut b = Vec::new();
        put_lenenc_int(&mut b, v);
        assert_eq!(packet::lenenc_int(&b), Some((v, b.len())));
        harness::lenenc(&b);
        for cut in 0..b.len() {
            assert_eq!(packet::lenenc_int(&b[..cut]), None);
        }
        let n = rng.below(4);
        b.extend(rng.bytes(n));
        harness::lenenc(&b);
    }
}

#[test]
fn continuation_packets_join_and_reframe() {
    let mut rng = Rng::new(0x3E5D_0006);
    for len in [
        MAX_PAYLOAD_CHUNK - 1,
        MAX_PAYLOAD_CHUNK,
        MAX_PAYLOAD_CHUNK + 1,
        2 * MAX_PAYLOAD_CHUNK,
    ] {
        let payload = vec![0x5a; len];
        let first = rng.byte();
        let mut seq = first;
        let mut stream = BytesMut::new();
        packet::put_packet(&mut stream, &mut seq, &payload);
        let chunks = len / MAX_PAYLOAD_CHUNK + 1;
        assert_eq!(seq, first.wrapping_add(chunks as u8));
        let raw = stream.to_vec();
        // Over the limit by one byte: refused, the buffer untouched.
        assert!(harness::take_packet_checked(&mut stream, len - 1).is_none());
        assert_eq!(stream.len(), raw.len());
        // Each chunk but the first numbered arbitrarily: the relay renumbers when it writes.
        let p = harness::take_packet_checked(&mut stream, len).expect("a whole packet");
        assert!(stream.is_empty());
        assert_eq!(
            (p.seq, p.chunks as usize, p.payload.len()),
            (first, chunks, len)
        );
        harness::reframe(&p, &raw);
        // Arriving in a few pieces.
        let mut buf = BytesMut::new();
        let mut got = None;
        for piece in raw.chunks(raw.len() / 3 + 1) {
            assert!(got.is_none());
            buf.extend_from_slice(piece);
            got = harness::take_packet_checked(&mut buf, usize::MAX);
        }
        assert_eq!(got.expect("complete").payload.len(), len);
    }
}
