//! Writing JSON by hand on the per-statement paths (audit events, recording lines), with
//! exactly the bytes `serde_json` writes for the same values.

/// Appends `s` as a JSON string. Text with nothing to escape (the usual statement) is
/// checked in one branch-free pass and copied whole; anything else goes through
/// `serde_json`, so the escapes are serde_json's own.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // No short-circuit: a plain fold over the bytes lets the compiler vectorize the scan.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Appends `key` (a ready-made `,"name":` fragment) and `value` as a JSON string.
pub fn write_key_str(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    write_str(out, value);
}

/// Appends `key` and `value` as serde_json writes it: for numbers, enums and JSON values,
/// whose serialization into a Vec cannot fail.
pub fn write_key_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, key: &[u8], value: &T) {
    out.extend_from_slice(key);
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", b as char)).collect();
        cases.extend(
            [
                "",
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                "it's \"quoted\" \\ and\ttabbed\nlines\r",
                "žluťoučký kůň 🐎 \u{7f} \u{2028} \u{fffd}",
                "\u{0}\u{1f}",
            ]
            .map(String::from),
        );
        for s in cases {
            let mut out = b"x".to_vec();
            write_str(&mut out, &s);
            let mut expected = b"x".to_vec();
            serde_json::to_writer(&mut expected, &s).unwrap();
            assert_eq!(out, expected, "{s:?}");
        }
    }
}
