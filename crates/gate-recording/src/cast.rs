//! asciicast v2, the format of terminal recordings: what the writer emits and a parser for
//! readers.
//!
//! A `.cast` file is a JSON header line followed by one JSON array per event,
//! `[t, code, data]`, where `t` is seconds since the start, `code` is `"o"` (output), `"i"`
//! (input), `"r"` (resize, `"COLSxROWS"`) or `"m"` (marker), and `data` a string. We write
//! exactly that, so the stock `asciinema` tools play Gate's recordings.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::RecordingError;

/// The only asciicast version written and read.
pub const CAST_VERSION: u32 = 2;

/// The header line of an asciicast v2 file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CastHeader {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    /// Unix seconds of the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_time_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// The event codes of asciicast v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventCode {
    Output,
    Input,
    Resize,
    Marker,
    /// A code this reader does not know; kept so nothing is silently lost.
    Other(String),
}

impl EventCode {
    pub fn as_str(&self) -> &str {
        match self {
            EventCode::Output => "o",
            EventCode::Input => "i",
            EventCode::Resize => "r",
            EventCode::Marker => "m",
            EventCode::Other(code) => code,
        }
    }

    fn parse(code: &str) -> EventCode {
        match code {
            "o" => EventCode::Output,
            "i" => EventCode::Input,
            "r" => EventCode::Resize,
            "m" => EventCode::Marker,
            other => EventCode::Other(other.to_string()),
        }
    }
}

/// One `[t, code, data]` event.
#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    /// Seconds since the start of the recording.
    pub time: f64,
    pub code: EventCode,
    pub data: String,
}

/// Serializes one event line, newline included. `t` is rounded to the microsecond, like
/// asciinema does, which keeps lines short.
pub(crate) fn event_line(t: f64, code: &str, data: &str) -> Vec<u8> {
    let t = (t * 1e6).round() / 1e6;
    // A float, two strings: serialization cannot fail.
    let mut out = serde_json::to_vec(&(t, code, data)).unwrap_or_default();
    out.push(b'\n');
    out
}

pub(crate) fn header_line(header: &CastHeader) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Parses a whole asciicast v2 recording. Blank lines are skipped (a cut-short recording may
/// end with one); anything else that is not a valid header or event is an error naming its
/// 1-based line number.
pub fn read_cast(bytes: &[u8]) -> Result<(CastHeader, Vec<CastEvent>), RecordingError> {
    let mut lines = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty());
    let Some((i, first)) = lines.next() else {
        return Err(format_error(1, "empty recording: no asciicast header"));
    };
    let header = parse_header(first).map_err(|m| format_error(i + 1, m))?;
    let events = lines
        .map(|(i, line)| parse_event(line).map_err(|m| format_error(i + 1, m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header, events))
}

fn format_error(line: usize, message: impl Into<String>) -> RecordingError {
    RecordingError::Format {
        line,
        message: message.into(),
    }
}

fn parse_header(line: &[u8]) -> Result<CastHeader, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("header is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("header is not a JSON object".into());
    };
    let version = map.get("version").and_then(Value::as_u64);
    if version != Some(u64::from(CAST_VERSION)) {
        return Err(format!(
            "not asciicast v2 (version {})",
            map.get("version").unwrap_or(&Value::Null)
        ));
    }
    let dimension = |name: &str| -> Result<u32, String> {
        map.get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("header {name} is missing or not a terminal size"))
    };
    let string = |name: &str| map.get(name).and_then(Value::as_str).map(str::to_string);
    let number = |name: &str| map.get(name).and_then(Value::as_f64);
    let env = match map.get("env") {
        Some(Value::Object(env)) => env
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(CastHeader {
        version: CAST_VERSION,
        width: dimension("width")?,
        height: dimension("height")?,
        // Some writers put a float here; whole seconds are enough.
        timestamp: number("timestamp")
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| t as u64),
        duration: number("duration"),
        idle_time_limit: number("idle_time_limit"),
        command: string("command"),
        title: string("title"),
        env,
    })
}

fn parse_event(line: &[u8]) -> Result<CastEvent, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("event is not JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("event is not a JSON array".into());
    };
    match items.as_slice() {
        [Value::Number(t), Value::String(code), Value::String(data)] => {
            let time = t
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or("event time is not a non-negative number")?;
            Ok(CastEvent {
                time,
                code: EventCode::parse(code),
                data: data.clone(),
            })
        }
        _ => Err("event is not [time, code, data]".into()),
    }
}

/// The time of one event line, if it is one.
pub(crate) fn event_time(line: &[u8]) -> Option<f64> {
    parse_event(line).ok().map(|event| event.time)
}

/// Turns a byte stream cut into arbitrary chunks into UTF-8 text, chunk by chunk.
///
/// A multibyte character split across two chunks is carried over (at most 3 bytes) instead
/// of becoming two replacement characters; bytes that can never be valid UTF-8 become
/// U+FFFD, so the recording stays valid JSON and plays.
#[derive(Debug, Default)]
pub(crate) struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `pending + chunk` up to an incomplete trailing sequence, which is kept.
    pub fn decode(&mut self, chunk: &[u8]) -> String {
        let joined;
        let mut rest: &[u8] = if self.pending.is_empty() {
            chunk
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            joined = buf;
            &joined
        };
        let mut out = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    return out;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by definition of `valid_up_to`.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // A sequence cut by the chunk boundary: at most 3 bytes.
                            self.pending = after.to_vec();
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream: an incomplete sequence that will never be
    /// completed, as U+FFFD (or nothing).
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.clear();
        Some(char::REPLACEMENT_CHARACTER.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_multibyte_characters_are_carried_over() {
        let text = "héllo → 世界 🎉!";
        let bytes = text.as_bytes();
        // Every possible split into three chunks decodes to the original text.
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut carry = Utf8Carry::default();
                let mut out = carry.decode(&bytes[..a]);
                out += &carry.decode(&bytes[a..b]);
                out += &carry.decode(&bytes[b..]);
                assert_eq!(carry.finish(), None);
                assert_eq!(out, text, "split at {a}/{b}");
            }
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.decode(b"a\xffb\xc3(c"), "a\u{fffd}b\u{fffd}(c");
        // An incomplete sequence followed by something that does not continue it.
        assert_eq!(carry.decode(b"x\xe2\x82"), "x");
        assert_eq!(carry.decode(b"y"), "\u{fffd}y");
        // One left dangling at the end of the stream.
        assert_eq!(carry.decode(b"\xf0\x9f"), "");
        assert_eq!(carry.finish().as_deref(), Some("\u{fffd}"));
        assert_eq!(carry.finish(), None);
    }

    #[test]
    fn events_and_headers_round_trip() {
        let header = CastHeader {
            version: 2,
            width: 80,
            height: 24,
            timestamp: Some(1_700_000_000),
            duration: None,
            idle_time_limit: None,
            command: None,
            title: Some("alice@host".into()),
            env: [("TERM".to_string(), "xterm-256color".to_string())].into(),
        };
        let mut file = header_line(&header);
        file.extend(event_line(0.1234567, "o", "\x1b[1mhi\r\n"));
        file.extend(event_line(1.5, "r", "100x40"));
        file.extend(b"\n");
        let (h, events) = read_cast(&file).unwrap();
        assert_eq!(h, header);
        assert_eq!(
            events,
            [
                CastEvent {
                    time: 0.123457,
                    code: EventCode::Output,
                    data: "\x1b[1mhi\r\n".into()
                },
                CastEvent {
                    time: 1.5,
                    code: EventCode::Resize,
                    data: "100x40".into()
                }
            ]
        );
        let text = String::from_utf8(header_line(&header)).unwrap();
        assert!(!text.contains("command"), "{text}");
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let ok = b"{\"version\":2,\"width\":80,\"height\":24}\n";
        let cases: [(&[u8], usize); 9] = [
            (b"", 1),
            (b"[1]\n", 1),
            (b"{\"version\":1,\"width\":80,\"height\":24}\n", 1),
            (b"{\"version\":2,\"width\":-1,\"height\":24}\n", 1),
            (b"{\"version\":2,\"width\":80,\"height\":99999999999}\n", 1),
            (b"\n\n{\"version\":2,\"height\":24}\n", 3),
            (&[ok.as_slice(), b"[1.0, \"o\"]\n"].concat(), 2),
            (&[ok.as_slice(), b"\n[-1.0, \"o\", \"x\"]\n"].concat(), 3),
            (&[ok.as_slice(), b"[1.0, \"o\", \"x\"\n"].concat(), 2),
        ];
        for (bytes, line) in cases {
            match read_cast(bytes) {
                Err(RecordingError::Format { line: got, .. }) => {
                    assert_eq!(got, line, "{:?}", String::from_utf8_lossy(bytes))
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
            }
        }
        let (_, events) = read_cast(&[ok.as_slice(), b"[2, \"x\", \"\"]\n"].concat()).unwrap();
        assert_eq!(events[0].code, EventCode::Other("x".into()));
    }
}
