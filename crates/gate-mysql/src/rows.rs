//! Masking MySQL result rows with a precomputed [`MaskPlan`]: text rows (COM_QUERY) and
//! binary rows (prepared statements). The plan was computed once per result shape.

use gate_enforcement::{MaskPlan, Masker};

use crate::packet::{PacketError, lenenc_int, lenenc_str, put_lenenc_int};

/// Column types whose binary value is a length-encoded string (maskable as text).
pub fn binary_is_string(column_type: u8) -> bool {
    matches!(column_type, 0 | 15 | 16 | 245..=255)
}

/// Size of a non-string binary value, given the bytes from its start.
fn binary_fixed_len(column_type: u8, at: &[u8]) -> Option<usize> {
    Some(match column_type {
        1 => 1,                                                       // TINY
        2 | 13 => 2,                                                  // SHORT, YEAR
        3 | 9 | 4 => 4,                                               // LONG, INT24, FLOAT
        8 | 5 => 8,                                                   // LONGLONG, DOUBLE
        6 => 0,                                                       // NULL
        7 | 10 | 11 | 12 | 17 | 18 | 19 => 1 + *at.first()? as usize, // temporal: length-prefixed
        _ => return None,
    })
}

fn bad(what: &'static str) -> PacketError {
    PacketError::Invalid(what)
}

/// Rewrites a text-protocol row (length-encoded strings, 0xFB for NULL) into `out`.
pub fn mask_text_row(
    payload: &[u8],
    plan: &MaskPlan,
    masker: &Masker,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), PacketError> {
    out.clear();
    let mut at = 0;
    let mut i = 0;
    while at < payload.len() {
        if payload[at] == 0xfb {
            out.push(0xfb);
            at += 1;
        } else {
            let (value, n) = lenenc_str(&payload[at..]).ok_or_else(|| bad("text row value"))?;
            match plan.strategy_for(i) {
                Some(strategy) => {
                    scratch.clear();
                    masker.mask_into(strategy, value, scratch);
                    put_lenenc_int(out, scratch.len() as u64);
                    out.extend_from_slice(scratch);
                }
                None => out.extend_from_slice(&payload[at..at + n]),
            }
            at += n;
        }
        i += 1;
    }
    Ok(())
}

/// Rewrites a binary-protocol row (0x00, NULL bitmap with offset 2, values by column type).
/// Masked string values are replaced; masked non-string values become NULL.
pub fn mask_binary_row(
    payload: &[u8],
    plan: &MaskPlan,
    column_types: &[u8],
    masker: &Masker,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), PacketError> {
    out.clear();
    let n = column_types.len();
    let bitmap_len = (n + 7 + 2) / 8;
    if payload.first() != Some(&0x00) || payload.len() < 1 + bitmap_len {
        return Err(bad("binary row header"));
    }
    out.push(0x00);
    let bitmap_at = out.len();
    out.extend_from_slice(&payload[1..1 + bitmap_len]);
    let mut at = 1 + bitmap_len;
    for (i, &ty) in column_types.iter().enumerate() {
        let bit = i + 2;
        if payload[1 + bit / 8] & (1 << (bit % 8)) != 0 {
            continue; // NULL: no value bytes
        }
        let rest = payload.get(at..).ok_or_else(|| bad("binary row value"))?;
        let len = if binary_is_string(ty) {
            let (len, n) = lenenc_int(rest).ok_or_else(|| bad("binary row length"))?;
            // A 0xFE length can be up to 2^64 - 1: checked, or it wraps (and panics in debug).
            usize::try_from(len)
                .ok()
                .and_then(|len| n.checked_add(len))
                .ok_or_else(|| bad("binary row length"))?
        } else {
            binary_fixed_len(ty, rest).ok_or_else(|| bad("binary row type"))?
        };
        let value = rest.get(..len).ok_or_else(|| bad("binary row value"))?;
        at += len;
        match plan.strategy_for(i) {
            None => out.extend_from_slice(value),
            Some(strategy) if binary_is_string(ty) => {
                let (text, _) = lenenc_str(value).ok_or_else(|| bad("binary row string"))?;
                scratch.clear();
                masker.mask_into(strategy, text, scratch);
                put_lenenc_int(out, scratch.len() as u64);
                out.extend_from_slice(scratch);
            }
            Some(_) => out[bitmap_at + bit / 8] |= 1 << (bit % 8),
        }
    }
    if at != payload.len() {
        return Err(bad("binary row has trailing bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::{MaskRule, MaskStrategy};

    fn plan(cols: &[&str], masked: &[&str]) -> MaskPlan {
        let rules: Vec<MaskRule> = masked
            .iter()
            .map(|c| MaskRule {
                column: c.to_string(),
                strategy: MaskStrategy::Redact,
            })
            .collect();
        MaskPlan::build(&rules, cols.iter().copied())
    }

    #[test]
    fn text_rows_mask_and_keep_nulls() {
        let mut row = Vec::new();
        for v in [&b"1"[..], b"123-45-6789"] {
            put_lenenc_int(&mut row, v.len() as u64);
            row.extend_from_slice(v);
        }
        row.push(0xfb);
        let mut out = Vec::new();
        mask_text_row(
            &row,
            &plan(&["id", "ssn", "x"], &["ssn", "x"]),
            &Masker::new(b"k"),
            &mut out,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(out, [&[1u8, b'1', 4][..], b"****", &[0xfb]].concat());
        for cut in 1..row.len() - 1 {
            let r = mask_text_row(
                &row[..cut],
                &plan(&["id", "ssn", "x"], &["ssn"]),
                &Masker::new(b"k"),
                &mut out,
                &mut Vec::new(),
            );
            assert!(r.is_err() || cut == 2, "cut {cut}");
        }
    }

    #[test]
    fn binary_rows_mask_strings_and_null_out_numbers() {
        // columns: LONG id, VAR_STRING email, LONGLONG n (NULL)
        let types = [3u8, 253, 8];
        let mut row = vec![0x00, 0b0001_0000]; // bit 4 = column 2 is NULL
        row.extend_from_slice(&7i32.to_le_bytes());
        row.push(5);
        row.extend_from_slice(b"a@b.c");
        let mut out = Vec::new();
        mask_binary_row(
            &row,
            &plan(&["id", "email", "n"], &["email", "id"]),
            &types,
            &Masker::new(b"k"),
            &mut out,
            &mut Vec::new(),
        )
        .unwrap();
        let mut expected = vec![0x00, 0b0001_0100]; // id now NULL too
        expected.push(4);
        expected.extend_from_slice(b"****");
        assert_eq!(out, expected);
        for cut in 0..row.len() {
            assert!(
                mask_binary_row(
                    &row[..cut],
                    &plan(&["id", "email", "n"], &["email"]),
                    &types,
                    &Masker::new(b"k"),
                    &mut out,
                    &mut Vec::new()
                )
                .is_err()
            );
        }
    }

    #[test]
    fn binary_rows_with_huge_string_lengths_are_refused() {
        // VAR_STRING whose 0xFE length is 2^64 - 1, then a LONG. Unchecked, 9 + length wrapped
        // to 8 (a panic in debug builds); in release the row was accepted, misparsed, with
        // the string's length bytes taken as its value and the LONG as the rest.
        let types = [253u8, 3];
        let mut row = vec![0x00, 0x00, 0xfe];
        row.extend_from_slice(&[0xff; 8]);
        row.extend_from_slice(&[1, 2, 3]);
        for masked in [&[][..], &["s"], &["n"]] {
            assert!(
                mask_binary_row(
                    &row,
                    &plan(&["s", "n"], masked),
                    &types,
                    &Masker::new(b"k"),
                    &mut Vec::new(),
                    &mut Vec::new()
                )
                .is_err()
            );
        }
    }
}
