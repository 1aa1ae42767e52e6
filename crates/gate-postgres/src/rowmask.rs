//! Masking one DataRow with a precomputed [`MaskPlan`]: the per-row hot path.
//!
//! The plan was computed once for the result shape; here each row is rewritten column by
//! column straight into the client's output buffer, with one reusable scratch buffer.

use bytes::BytesMut;
use gate_enforcement::{MaskPlan, Masker};

use crate::wire::{self, MsgWriter, Reader, WireError};

/// Types whose binary representation is their text: masking them in binary format yields a
/// valid value. Other binary columns are masked to NULL (their value is hidden either way).
pub fn binary_is_text(oid: u32) -> bool {
    matches!(oid, 18 | 19 | 25 | 114 | 142 | 705 | 1042 | 1043)
}

/// Writes a DataRow with the plan's columns masked.
pub fn mask_data_row(
    body: &[u8],
    plan: &MaskPlan,
    type_oids: &[u32],
    formats: &[i16],
    masker: &Masker,
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
) -> Result<(), WireError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    let mut w = MsgWriter::begin(out, b'D');
    w.i16(n);
    for i in 0..n.max(0) as usize {
        let len = r.i32()?;
        if len < 0 {
            w.i32(-1);
            continue;
        }
        let value = r.bytes(len as usize)?;
        match plan.strategy_for(i) {
            None => {
                w.i32(len).bytes(value);
            }
            Some(strategy) => {
                let binary = wire::format_of(formats, i) == 1;
                if binary && !binary_is_text(type_oids.get(i).copied().unwrap_or(0)) {
                    w.i32(-1);
                } else {
                    scratch.clear();
                    masker.mask_into(strategy, value, scratch);
                    w.i32(scratch.len() as i32).bytes(scratch);
                }
            }
        }
    }
    w.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::{MaskRule, MaskStrategy};

    fn row(values: &[Option<&[u8]>]) -> BytesMut {
        let mut b = BytesMut::new();
        let mut w = MsgWriter::begin(&mut b, b'D');
        w.i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    w.i32(v.len() as i32).bytes(v);
                }
                None => {
                    w.i32(-1);
                }
            }
        }
        w.finish();
        b
    }

    #[test]
    fn masks_planned_columns_keeps_nulls_and_others() {
        let plan = MaskPlan::build(
            &[MaskRule {
                column: "ssn".into(),
                strategy: MaskStrategy::Redact,
            }],
            ["id", "ssn", "note"],
        );
        let input = row(&[Some(b"1"), Some(b"123-45-6789"), None]);
        let mut out = BytesMut::new();
        mask_data_row(
            &input[5..],
            &plan,
            &[23, 25, 25],
            &[],
            &Masker::new(b"k"),
            &mut out,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(&out[..], &row(&[Some(b"1"), Some(b"****"), None])[..]);

        // Binary int column cannot hold a mask: it becomes NULL; binary text is masked.
        let plan = MaskPlan::build(
            &[
                MaskRule {
                    column: "a".into(),
                    strategy: MaskStrategy::Redact,
                },
                MaskRule {
                    column: "b".into(),
                    strategy: MaskStrategy::Redact,
                },
            ],
            ["a", "b"],
        );
        let input = row(&[Some(&7i32.to_be_bytes()), Some(b"secret")]);
        let mut out = BytesMut::new();
        mask_data_row(
            &input[5..],
            &plan,
            &[23, 25],
            &[1],
            &Masker::new(b"k"),
            &mut out,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(&out[..], &row(&[None, Some(b"****")])[..]);
    }

    #[test]
    fn truncated_rows_are_errors_not_panics() {
        let plan = MaskPlan::build(
            &[MaskRule {
                column: "a".into(),
                strategy: MaskStrategy::Partial,
            }],
            ["a"],
        );
        let input = row(&[Some(b"abcdef")]);
        for cut in 5..input.len() {
            let mut out = BytesMut::new();
            assert!(
                mask_data_row(
                    &input[5..cut],
                    &plan,
                    &[25],
                    &[],
                    &Masker::new(b"k"),
                    &mut out,
                    &mut Vec::new()
                )
                .is_err()
            );
        }
    }
}
