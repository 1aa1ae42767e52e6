//! Deterministic robustness run of the decoders that read untrusted bytes: the PostgreSQL
//! wire parsers, DataRow masking, `gate_sql::analyze` and the masking strategies.
//!
//! The checks are the fuzz harnesses of `fuzz/src/lib.rs` (included below, so `cargo fuzz`
//! and `cargo test` exercise the same code with the same oracles); this file feeds them a few
//! hundred thousand pseudo-random and mutated-valid inputs from a fixed seed, and checks
//! that valid messages built with `wire::MsgWriter` decode back to what was written, also
//! when the stream arrives in arbitrary pieces. A failure prints the seed and the input.

#[path = "../../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use bytes::BytesMut;
use gate_enforcement::Masker;
use gate_postgres::wire::{self, MsgWriter, Reader};

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
    /// A string without NUL, ASCII or not, sometimes invalid UTF-8.
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
    fn i16_small(&mut self) -> i16 {
        match self.below(8) {
            0 => -1,
            1 => i16::MIN,
            2 => i16::MAX,
            _ => self.below(4) as i16,
        }
    }
}

/// Edits a valid input the ways fuzzers do: flips, truncations, insertions, length-field
/// tweaks, duplications.
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
                v[i] = *rng.pick(&[0, 0xff, 0x7f, 0x80, 1, b'D', b'T']);
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                let n = rng.below(6);
                let extra = rng.bytes(n);
                v.splice(i..i, extra);
            }
            4 if v.len() >= 4 => {
                // Overwrite a 4-byte field (often a length) with a boundary value.
                let i = rng.below(v.len() - 3);
                let x: i32 = *rng.pick(&[
                    -1,
                    -2,
                    0,
                    3,
                    4,
                    5,
                    i32::MAX,
                    i32::MIN,
                    1 << 20,
                    (1 << 20) + 1,
                ]);
                v[i..i + 4].copy_from_slice(&x.to_be_bytes());
            }
            5 if v.len() >= 2 => {
                let i = rng.below(v.len() - 1);
                let x: i16 = *rng.pick(&[-1, 0, 1, 2, i16::MAX, i16::MIN]);
                v[i..i + 2].copy_from_slice(&x.to_be_bytes());
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

/// What a generated message should decode to.
enum Msg {
    Query(Vec<u8>),
    Parse(Vec<u8>, Vec<u8>, Vec<u32>),
    Bind(Vec<u8>, Vec<u8>, Vec<i16>),
    DescribeOrClose(u8, u8, Vec<u8>),
    Execute(Vec<u8>, i32),
    RowDescription(Vec<Vec<u8>>, Vec<u32>, Vec<i16>),
    DataRow(Vec<Option<Vec<u8>>>),
    Error(u8, Vec<(u8, Vec<u8>)>),
}

fn gen_msg(rng: &mut Rng, backend: bool) -> Msg {
    if backend {
        match rng.below(3) {
            0 => {
                let n = rng.below(6);
                let names = (0..n).map(|_| rng.name()).collect();
                let oids = (0..n)
                    .map(|_| *rng.pick(&[16, 17, 19, 23, 25, 114, 1042, 1043, 0, u32::MAX]))
                    .collect();
                let formats = (0..n).map(|_| *rng.pick(&[0, 0, 1, 2, -1])).collect();
                Msg::RowDescription(names, oids, formats)
            }
            1 => {
                let n = rng.below(8);
                Msg::DataRow(
                    (0..n)
                        .map(|_| (!rng.chance(5)).then(|| rng.name()))
                        .collect(),
                )
            }
            _ => {
                let n = rng.below(5);
                let fields = (0..n)
                    .map(|_| (*rng.pick(b"SVCMDHPqtx"), rng.name()))
                    .collect();
                Msg::Error(*rng.pick(b"EN"), fields)
            }
        }
    } else {
        match rng.below(5) {
            0 => Msg::Query(rng.name()),
            1 => {
                let types = (0..rng.below(4)).map(|_| rng.next() as u32).collect();
                Msg::Parse(rng.name(), rng.name(), types)
            }
            2 => {
                let formats = (0..rng.below(4)).map(|_| rng.i16_small()).collect();
                Msg::Bind(rng.name(), rng.name(), formats)
            }
            3 => Msg::DescribeOrClose(*rng.pick(b"DC"), *rng.pick(b"SP"), rng.name()),
            _ => Msg::Execute(rng.name(), rng.next() as i32),
        }
    }
}

fn encode(rng: &mut Rng, msg: &Msg, out: &mut BytesMut) {
    match msg {
        Msg::Query(q) => wire::put_query(out, &String::from_utf8_lossy(q)),
        Msg::Parse(name, query, types) => {
            let mut w = MsgWriter::begin(out, b'P');
            w.cstr(name).cstr(query).i16(types.len() as i16);
            for t in types {
                w.i32(*t as i32);
            }
            w.finish();
        }
        Msg::Bind(portal, statement, formats) => {
            let mut w = MsgWriter::begin(out, b'B');
            w.cstr(portal).cstr(statement);
            let nfmt = rng.below(3) as i16;
            w.i16(nfmt);
            for _ in 0..nfmt {
                w.i16(rng.below(2) as i16);
            }
            let nparams = rng.below(4) as i16;
            w.i16(nparams);
            for _ in 0..nparams {
                if rng.chance(3) {
                    w.i32(-1);
                } else {
                    let v = rng.name();
                    w.i32(v.len() as i32).bytes(&v);
                }
            }
            w.i16(formats.len() as i16);
            for f in formats {
                w.i16(*f);
            }
            w.finish();
        }
        Msg::DescribeOrClose(tag, kind, name) => {
            MsgWriter::begin(out, *tag).u8(*kind).cstr(name).finish()
        }
        Msg::Execute(portal, limit) => MsgWriter::begin(out, b'E')
            .cstr(portal)
            .i32(*limit)
            .finish(),
        Msg::RowDescription(names, oids, formats) => {
            let mut w = MsgWriter::begin(out, b'T');
            w.i16(names.len() as i16);
            for ((name, oid), format) in names.iter().zip(oids).zip(formats) {
                w.cstr(name).i32(rng.next() as i32).i16(rng.next() as i16);
                w.i32(*oid as i32).i16(-1).i32(-1).i16(*format);
            }
            w.finish();
        }
        Msg::DataRow(values) => {
            let mut w = MsgWriter::begin(out, b'D');
            w.i16(values.len() as i16);
            for v in values {
                match v {
                    Some(v) => w.i32(v.len() as i32).bytes(v),
                    None => w.i32(-1),
                };
            }
            w.finish();
        }
        Msg::Error(tag, fields) => {
            let mut w = MsgWriter::begin(out, *tag);
            for (kind, value) in fields {
                w.u8(*kind).cstr(value);
            }
            w.u8(0);
            w.finish();
        }
    }
}

/// Decodes one frame and compares it with the message it was built from.
fn check_decoded(msg: &Msg, frame: &wire::Frame) {
    let body = frame.body();
    let mut r = Reader::new(body);
    match msg {
        Msg::Query(q) => {
            assert_eq!(frame.tag, b'Q');
            assert_eq!(r.cstr().unwrap(), String::from_utf8_lossy(q).as_bytes());
            assert!(r.remaining().is_empty());
        }
        Msg::Parse(name, query, types) => {
            assert_eq!(frame.tag, b'P');
            assert_eq!(r.cstr().unwrap(), &name[..]);
            assert_eq!(r.cstr().unwrap(), &query[..]);
            assert_eq!(r.i16().unwrap() as usize, types.len());
            for t in types {
                assert_eq!(r.i32().unwrap() as u32, *t);
            }
            assert!(r.remaining().is_empty());
        }
        Msg::Bind(portal, statement, formats) => {
            assert_eq!(frame.tag, b'B');
            let info = wire::parse_bind(body).unwrap();
            assert_eq!(info.portal, &portal[..]);
            assert_eq!(info.statement, &statement[..]);
            assert_eq!(&info.result_formats, formats);
        }
        Msg::DescribeOrClose(tag, kind, name) => {
            assert_eq!(frame.tag, *tag);
            assert_eq!(r.u8().unwrap(), *kind);
            assert_eq!(r.cstr().unwrap(), &name[..]);
            assert!(r.remaining().is_empty());
        }
        Msg::Execute(portal, limit) => {
            assert_eq!(frame.tag, b'E');
            assert_eq!(r.cstr().unwrap(), &portal[..]);
            assert_eq!(r.i32().unwrap(), *limit);
            assert!(r.remaining().is_empty());
        }
        Msg::RowDescription(names, oids, formats) => {
            assert_eq!(frame.tag, b'T');
            let d = wire::parse_row_description(body).unwrap();
            let expected: Vec<String> = names
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            assert_eq!(d.names, expected);
            assert_eq!(&d.type_oids, oids);
            assert_eq!(&d.formats, formats);
        }
        Msg::DataRow(values) => {
            assert_eq!(frame.tag, b'D');
            let (n, got) = harness::data_row_oracle(body).unwrap();
            assert_eq!(n as usize, values.len());
            let got: Vec<Option<Vec<u8>>> =
                got.into_iter().map(|v| v.map(<[u8]>::to_vec)).collect();
            assert_eq!(&got, values);
        }
        Msg::Error(tag, fields) => {
            assert_eq!(frame.tag, *tag);
            let e = wire::parse_error(body);
            // The last occurrence of a field wins; `S` only until a `V` is seen.
            let last = |k: u8| {
                fields
                    .iter()
                    .rev()
                    .find(|(kind, _)| *kind == k)
                    .map(|(_, v)| std::str::from_utf8(v).unwrap_or(""))
            };
            assert_eq!(e.code, last(b'C').unwrap_or("XX000"));
            assert_eq!(e.message, last(b'M').unwrap_or(""));
            if fields.iter().all(|(k, _)| *k != b'V' && *k != b'S') {
                assert_eq!(e.severity, "ERROR");
            }
        }
    }
}

/// Takes frames off `stream` as if it arrived in random pieces, as a socket delivers it.
fn frames_in_pieces(rng: &mut Rng, stream: &[u8]) -> Vec<wire::Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = 1 + rng.below(stream.len() - fed).min(rng.len());
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        while let Some(f) = harness::take_frame_checked(&mut buf, harness::MAX_FRAME) {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "a valid stream leaves nothing behind");
    frames
}

#[test]
fn valid_streams_round_trip_and_survive_mutation() {
    let mut rng = Rng::new(0x6A7E_0001);
    let mut mutated = 0;
    for round in 0..12_000 {
        let backend = round % 2 == 1;
        let msgs: Vec<Msg> = (0..1 + rng.below(5))
            .map(|_| gen_msg(&mut rng, backend))
            .collect();
        let mut stream = BytesMut::new();
        for m in &msgs {
            encode(&mut rng, m, &mut stream);
        }
        let frames = frames_in_pieces(&mut rng, &stream);
        assert_eq!(frames.len(), msgs.len(), "round {round}");
        for (m, f) in msgs.iter().zip(&frames) {
            check_decoded(m, f);
        }
        let stream = stream.to_vec();
        // The whole valid stream through the harnesses (backend ones start with 10 config bytes).
        if backend {
            let mut input = rng.bytes(10);
            input.extend_from_slice(&stream);
            harness::pg_backend(&input);
        } else {
            harness::pg_frontend(&stream);
        }
        for _ in 0..12 {
            let m = mutate(&mut rng, &stream);
            if backend {
                let mut input = rng.bytes(10);
                input.extend_from_slice(&m);
                harness::pg_backend(&input);
            } else {
                harness::pg_frontend(&m);
            }
            mutated += 1;
        }
    }
    assert_eq!(mutated, 144_000);
}

#[test]
fn random_bytes_never_panic_a_decoder() {
    let mut rng = Rng::new(0x6A7E_0002);
    for _ in 0..60_000 {
        let n = rng.len();
        let mut input = rng.bytes(n);
        // Half the time, a plausible header so that framing gets past the length check.
        if rng.chance(2) && input.len() >= 5 {
            let len = (rng.below(input.len()) + 4) as i32;
            input[0] = *rng.pick(b"QPBDCETNpXS");
            input[1..5].copy_from_slice(&len.to_be_bytes());
        }
        harness::pg_frontend(&input);
        harness::pg_backend(&input);
        wire::parse_bind(&input).ok();
        harness::row_description(&input);
        harness::error_fields(&input);
        harness::startup_params(&input);
    }
}

#[test]
fn data_rows_are_masked_exactly() {
    let mut rng = Rng::new(0x6A7E_0003);
    let masker = Masker::new(b"decoder robustness");
    let mut scratch = Vec::new();
    for _ in 0..20_000 {
        let n = rng.below(7);
        let names: Vec<String> = (0..n)
            .map(|_| String::from_utf8_lossy(&rng.name()).into_owned())
            .collect();
        let oids = (0..n)
            .map(|_| *rng.pick(&[17, 23, 25, 1043, 114]))
            .collect();
        let formats = (0..rng.below(n + 2)).map(|_| rng.below(2) as i16).collect();
        let shape = harness::Shape::build(&names, oids, formats, rng.next(), rng.byte());
        let values: Vec<Option<Vec<u8>>> = (0..rng.below(n + 2))
            .map(|_| (!rng.chance(4)).then(|| rng.name()))
            .collect();
        let mut row = BytesMut::new();
        encode(&mut rng, &Msg::DataRow(values), &mut row);
        harness::data_row(&row[5..], &shape, &masker, &mut scratch);
        for _ in 0..4 {
            harness::data_row(&mutate(&mut rng, &row[5..]), &shape, &masker, &mut scratch);
        }
    }
}

#[test]
fn startup_packets_round_trip() {
    let mut rng = Rng::new(0x6A7E_0004);
    for _ in 0..20_000 {
        let params: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.below(4))
            .map(|_| {
                let mut k = rng.name();
                if k.is_empty() {
                    k.push(b'k');
                }
                (k, rng.name())
            })
            .collect();
        let mut packet = BytesMut::new();
        let mut w = MsgWriter::begin_untagged(&mut packet);
        w.i32(wire::PROTOCOL_3_0);
        for (k, v) in &params {
            w.cstr(k).cstr(v);
        }
        w.u8(0);
        w.finish();
        let n = rng.below(8);
        let trailing = rng.bytes(n);
        let mut input = packet.to_vec();
        input.extend_from_slice(&trailing);
        let body = harness::startup(&input).expect("a valid startup packet is read");
        assert_eq!(&body[..], &packet[4..]);
        let parsed = wire::parse_startup_params(&body[4..]).unwrap();
        let expected: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(parsed, expected);
        for _ in 0..4 {
            harness::pg_frontend(&mutate(&mut rng, &input));
        }
    }
}

#[test]
fn masking_strategies_follow_their_definitions() {
    let mut rng = Rng::new(0x6A7E_0005);
    let pieces = [
        "a",
        "@",
        "@@",
        " ",
        "\u{3000}",
        "é",
        "日本語",
        "😀",
        "\u{301}",
        "x.org",
        "\"q@l\"",
        "*",
    ];
    for i in 0..30_000 {
        let mut input = vec![rng.byte() % 8];
        input.extend(rng.bytes(input[0] as usize));
        if i % 2 == 0 {
            let n = rng.len();
            input.extend(rng.bytes(n));
        } else {
            for _ in 0..rng.below(8) {
                input.extend_from_slice(rng.pick(&pieces).as_bytes());
            }
        }
        harness::masking(&input);
    }
}

/// A statement that both dialects parse, with a literal holding a `;` now and then.
fn gen_statement(rng: &mut Rng) -> String {
    let table = *rng.pick(&["t", "accounts", "s.t", "\"Mixed\"", "ACCOUNTS"]);
    let literal = *rng.pick(&["1", "'x;y'", "'é'", "NULL", "'--'", "'/*'"]);
    match rng.below(8) {
        0 => format!("SELECT a, b FROM {table} WHERE a = {literal}"),
        1 => format!("DELETE FROM {table} WHERE a = {literal}"),
        2 => format!("INSERT INTO {table} VALUES ({literal})"),
        3 => format!("UPDATE {table} SET a = {literal}"),
        4 => format!("DROP TABLE {table}"),
        5 => format!("SELECT * FROM {table} JOIN u ON {table}.id = u.id"),
        6 => format!("TRUNCATE {table}"),
        _ => format!("SELECT {literal}"),
    }
}

#[test]
fn sql_statements_are_their_own_slices() {
    let mut rng = Rng::new(0x6A7E_0007);
    for _ in 0..1_500 {
        let segments: Vec<String> = (0..1 + rng.below(4))
            .map(|_| {
                let lead = *rng.pick(&["", " ", "\n  ", "/* c */ ", "-- c\n"]);
                format!("{lead}{}", gen_statement(&mut rng))
            })
            .collect();
        let end = *rng.pick(&["", ";", " ; ", ";\n-- done\n"]);
        let sql = format!("{}{end}", segments.join(";"));
        harness::sql_facts(sql.as_bytes());
        for dialect in [gate_sql::SqlDialect::Postgres, gate_sql::SqlDialect::Mysql] {
            let facts = gate_sql::analyze(&sql, dialect);
            let statements: Vec<&str> = facts.iter().map(|f| &*f.statement).collect();
            let expected: Vec<&str> = segments.iter().map(|s| s.trim()).collect();
            assert_eq!(statements, expected, "{dialect:?}: {sql:?}");
        }
        for _ in 0..4 {
            harness::sql_facts(&mutate(&mut rng, sql.as_bytes()));
        }
    }
}

#[test]
fn sql_text_facts_are_slices_of_the_input() {
    let mut rng = Rng::new(0x6A7E_0006);
    let tokens = [
        "SELECT",
        "select",
        "*",
        "FROM",
        "t",
        "\"T\"",
        "s.t",
        "WHERE",
        "a",
        "=",
        "1",
        "'x;y'",
        ";",
        ";",
        " ",
        "\n",
        "\t",
        "\u{3000}",
        "-- c\n",
        "/* ; */",
        "/*!50000 ",
        "*/",
        "DELETE",
        "INSERT INTO",
        "VALUES",
        "(",
        ")",
        ",",
        "WITH",
        "AS",
        "DROP TABLE",
        "EXPLAIN ANALYZE",
        "COPY",
        "TO STDOUT",
        "$$",
        "$1",
        "é",
        "`b`",
        "INTO",
        "@v",
        "END",
        "BEGIN",
        "CREATE FUNCTION",
        "RETURNS",
        "LANGUAGE",
        "UPDATE",
        "SET",
        "GRANT",
        "ON",
        "TO",
        "#",
        "\\",
        "\"",
    ];
    for i in 0..2_500 {
        let mut sql = String::new();
        for _ in 0..rng.below(14) {
            let token: &&str = rng.pick(&tokens);
            sql.push_str(token);
            if rng.chance(2) {
                sql.push(' ');
            }
        }
        harness::sql_facts(sql.as_bytes());
        if i % 5 == 0 {
            harness::sql_facts(&mutate(&mut rng, sql.as_bytes()));
        }
    }
}
