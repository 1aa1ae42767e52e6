//! Moving bytes between a client channel and its upstream twin.
//!
//! Each direction runs in its own task, so a direction that waits for the peer's window
//! never stops the other one (a `cat` whose output is not read would otherwise deadlock a
//! paste). Both directions go through russh's window-aware writers: nothing is buffered
//! beyond the SSH windows and russh's bounded per-channel queues.
//!
//! Channel requests (pty, exec, …) are not relayed here: the connection handler forwards
//! them in order and waits for their replies, which this module routes back to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gate_recording::TerminalRecorder;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client, server};
use tokio::sync::{Mutex, mpsc};

/// What a relayed channel moved and how it ended, shared by both directions.
#[derive(Default)]
pub struct ChannelStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// `u32::MAX` until the upstream reports an exit status.
    pub exit_status: AtomicU64,
    pub exit_signal: std::sync::Mutex<Option<String>>,
}

impl ChannelStats {
    pub fn new() -> Arc<ChannelStats> {
        Arc::new(ChannelStats {
            exit_status: AtomicU64::new(u64::MAX),
            ..Default::default()
        })
    }

    pub fn exit_status(&self) -> Option<u32> {
        u32::try_from(self.exit_status.load(Ordering::Relaxed)).ok()
    }
}

/// Activity clock of a connection, for the idle timeout.
#[derive(Default)]
pub struct Activity {
    started: std::sync::OnceLock<Instant>,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        let a = Activity::default();
        let _ = a.started.set(Instant::now());
        Arc::new(a)
    }

    pub fn touch(&self) {
        let ms = self
            .started
            .get()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last traffic.
    pub fn idle_for(&self) -> std::time::Duration {
        let now = self
            .started
            .get()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        std::time::Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// What a relay does with each chunk besides forwarding it: note activity, count, record.
struct Tap<'a> {
    counter: &'a AtomicU64,
    activity: &'a Activity,
    recorder: &'a Mutex<Option<TerminalRecorder>>,
    /// Client-to-upstream (recorded as input, when the resource records input).
    input: bool,
}

impl Tap<'_> {
    async fn see(&self, data: &[u8], record: bool) {
        self.activity.touch();
        self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        if !record {
            return;
        }
        if let Some(rec) = self.recorder.lock().await.as_ref() {
            if self.input {
                rec.input(data).await;
            } else {
                rec.output(data).await;
            }
        }
    }
}

/// Client → upstream: data, stderr-in (rare), EOF and close. Ends when the client closes
/// the channel; then closes the upstream twin.
pub async fn client_to_upstream(
    mut from_client: ChannelReadHalf,
    to_upstream: Arc<ChannelWriteHalf<client::Msg>>,
    stats: Arc<ChannelStats>,
    activity: Arc<Activity>,
    recorder: Arc<Mutex<Option<TerminalRecorder>>>,
) {
    let tap = Tap {
        counter: &stats.bytes_in,
        activity: &activity,
        recorder: &recorder,
        input: true,
    };
    while let Some(msg) = from_client.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                tap.see(&data, true).await;
                to_upstream.data_bytes(data).await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                tap.see(&data, false).await;
                to_upstream.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => to_upstream.eof().await,
            ChannelMsg::Close => break,
            // Requests are forwarded by the connection handler, in order, with replies.
            _ => Ok(()),
        };
        if sent.is_err() {
            // The upstream channel is gone; its closing ends the other direction.
            break;
        }
    }
    let _ = to_upstream.close().await;
}

/// Upstream → client: output, stderr, EOF, exit status/signal, close; request replies go
/// to `replies`. Ends when the upstream closes the channel; then closes the client's.
#[allow(clippy::too_many_arguments)]
pub async fn upstream_to_client(
    mut from_upstream: ChannelReadHalf,
    to_client: Arc<ChannelWriteHalf<server::Msg>>,
    client_handle: server::Handle,
    stats: Arc<ChannelStats>,
    activity: Arc<Activity>,
    recorder: Arc<Mutex<Option<TerminalRecorder>>>,
    replies: mpsc::Sender<bool>,
) {
    let id = to_client.id();
    let tap = Tap {
        counter: &stats.bytes_out,
        activity: &activity,
        recorder: &recorder,
        input: false,
    };
    while let Some(msg) = from_upstream.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                tap.see(&data, true).await;
                to_client.data_bytes(data).await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                // Without a PTY stderr is separate; the user saw it, so the recording has it.
                tap.see(&data, true).await;
                to_client.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => to_client.eof().await,
            ChannelMsg::ExitStatus { exit_status } => {
                stats
                    .exit_status
                    .store(u64::from(exit_status), Ordering::Relaxed);
                to_client.exit_status(exit_status).await
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                *stats.exit_signal.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(signal_name_of(&signal_name));
                client_handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|()| russh::Error::SendError)
            }
            ChannelMsg::Success => {
                let _ = replies.try_send(true);
                Ok(())
            }
            ChannelMsg::Failure => {
                let _ = replies.try_send(false);
                Ok(())
            }
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to_client.close().await;
}

/// `TERM`, `KILL`, … as OpenSSH names signals on the wire.
pub fn signal_name_of(sig: &russh::Sig) -> String {
    use russh::Sig;
    match sig {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(name) => name.clone(),
    }
}

/// A forwarded TCP connection (`-L` or `-R`): both directions, byte counts, no recording.
pub async fn relay_forward<A, B>(
    mut a_read: ChannelReadHalf,
    a_write: ChannelWriteHalf<A>,
    mut b_read: ChannelReadHalf,
    b_write: ChannelWriteHalf<B>,
    a_to_b: Arc<AtomicU64>,
    b_to_a: Arc<AtomicU64>,
    activity: Arc<Activity>,
) where
    A: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
    B: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let act = activity.clone();
    let forward = async move {
        while let Some(msg) = a_read.wait().await {
            let r = match msg {
                ChannelMsg::Data { data } => {
                    act.touch();
                    a_to_b.fetch_add(data.len() as u64, Ordering::Relaxed);
                    b_write.data_bytes(data).await
                }
                ChannelMsg::Eof => b_write.eof().await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = b_write.close().await;
    };
    let backward = async move {
        while let Some(msg) = b_read.wait().await {
            let r = match msg {
                ChannelMsg::Data { data } => {
                    activity.touch();
                    b_to_a.fetch_add(data.len() as u64, Ordering::Relaxed);
                    a_write.data_bytes(data).await
                }
                ChannelMsg::Eof => a_write.eof().await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = a_write.close().await;
    };
    tokio::join!(forward, backward);
}
