//! Timestamps as written in audit events and recordings: RFC 3339 UTC with microseconds.

use std::time::SystemTime;

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Appends `t` as a JSON string in the same form as [`serde_rfc3339`] writes it (no
/// character of an RFC 3339 timestamp needs escaping).
pub fn write_json_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    use std::io::Write;
    out.push(b'"');
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", humantime::format_rfc3339_micros(t));
    out.push(b'"');
}

/// Serde helper for `SystemTime` fields written as RFC 3339.
pub mod serde_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}
