//! Recognising the protocol on the shared listener from the client's first bytes.
//!
//! Client-first protocols announce themselves: PostgreSQL starts with a length and a
//! protocol/request code. Server-first protocols (MySQL) send nothing until greeted; when the
//! client stays silent for [`CLIENT_FIRST_WAIT`], the listener will greet as such a protocol
//! once one is served. Until then a silent or unrecognised client is closed.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long to wait for a client-first protocol to speak.
pub const CLIENT_FIRST_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Postgres,
    /// `SSH-2.0-…`: SSH clients send their version line without waiting for the server's.
    Ssh,
    /// The client said nothing within the wait: a server-first protocol.
    Silent,
    Unknown,
}

/// Classifies the first bytes of a connection.
pub fn classify(first: &[u8]) -> Option<Detected> {
    if first.len() >= 4 && first.starts_with(b"SSH-") {
        return Some(Detected::Ssh);
    }
    if first.len() < 8 {
        return None;
    }
    let len = i32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let code = i32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let pg_code = matches!(code, 80_877_102..=80_877_104) || code >> 16 == 3;
    Some(if (8..=10_000).contains(&len) && pg_code {
        Detected::Postgres
    } else {
        Detected::Unknown
    })
}

/// Peeks (without consuming) until the protocol is known.
pub async fn detect(stream: &TcpStream) -> Detected {
    let mut buf = [0u8; 8];
    let deadline = tokio::time::Instant::now() + CLIENT_FIRST_WAIT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Detected::Silent,
            Ok(Err(_)) | Ok(Ok(0)) => return Detected::Unknown,
            Ok(Ok(n)) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // Fewer than 8 bytes so far: wait for more without spinning.
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return Detected::Silent;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_postgres_requests() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(classify(&ssl), Some(Detected::Postgres));
        let startup = [0, 0, 0, 40, 0, 3, 0, 0];
        assert_eq!(classify(&startup), Some(Detected::Postgres));
        assert_eq!(classify(b"SSH-2.0-"), Some(Detected::Ssh));
        assert_eq!(classify(b"SSH-"), Some(Detected::Ssh));
        assert_eq!(classify(b"GET / HT"), Some(Detected::Unknown));
        assert_eq!(classify(&[0, 0, 0]), None);
    }
}
