//! Session shards: every connection lives its whole life on one thread.
//!
//! The connector serves connections on N single-threaded tokio runtimes (one per CPU by
//! default, `worker_threads`) instead of one work-stealing runtime. A session's task, its
//! sockets and the timers it sets all belong to one shard, so the bytes of a request never
//! wait for a task to migrate and no thread is woken to steal work that the thread already
//! holding it was about to do. On a host the gateway shares with its database and clients,
//! those wake-ups were a measurable part of Gate's CPU per query (docs/benchmarks.md); this
//! is the layout pgbouncer (one thread) and nginx (one process per core) have for the same
//! reason.
//!
//! A new connection goes to the shard with the fewest live connections, so long-lived
//! sessions spread evenly. The price: a session that hogs its thread (a very expensive
//! policy evaluation) delays the other sessions of its shard rather than being worked
//! around; handlers keep every step short, and blocking work goes to `spawn_blocking`.
//!
//! Background work (the recording writer, control-plane sync, health, grant sweeps) stays
//! on the connector's own runtime; channels and wakers work across runtimes.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard the calling thread serves, if it is a shard thread. The connection pool uses it
/// to hand a session an upstream connection registered with its own thread's reactor.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

struct Shard {
    handle: Handle,
    /// Connections spawned here and not yet finished (`gate_thread_connections`).
    live: IntGauge,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The shard runtimes. Dropping this without [`SessionShards::shutdown`] leaves the threads
/// running until the process exits.
pub struct SessionShards {
    shards: Vec<Shard>,
    /// Where the search for the least-loaded shard starts, so ties rotate.
    next: AtomicUsize,
}

impl SessionShards {
    /// Starts `n` shard threads (at least one), named `gate-shard-<i>`, counting their
    /// connections in `metrics`.
    pub fn start(n: usize, metrics: &crate::Metrics) -> std::io::Result<SessionShards> {
        let mut shards = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("gate-shard-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(i)));
                    let _ = runtime.block_on(stopped);
                    // Tasks still here (sessions that outlived the drain) are dropped; a
                    // session's Drop finishes it on the pipeline's runtime. A blocking call
                    // that hangs (a DNS lookup) is not waited for.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            let live = metrics
                .thread_connections
                .with_label_values(&[i.to_string().as_str()]);
            live.set(0);
            shards.push(Shard {
                handle,
                live,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(SessionShards {
            shards,
            next: AtomicUsize::new(0),
        })
    }

    /// Live connections per shard, in shard order.
    pub fn loads(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.live.get().max(0) as usize)
            .collect()
    }

    /// The shard with the fewest live connections; ties go round-robin.
    fn pick(&self) -> &Shard {
        let n = self.shards.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &self.shards[(start + k) % n])
            .min_by_key(|s| s.live.get())
            .expect("at least one shard")
    }

    /// Runs `serve` for an accepted connection on the least-loaded shard. The stream is
    /// moved to that shard's reactor first (a tokio socket belongs to the runtime that
    /// registered it). A connection that cannot be moved is closed and logged.
    pub fn serve_connection<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a shard; closing it");
                return;
            }
        };
        let shard = self.pick();
        let live = LiveGuard::new(shard.live.clone());
        shard.handle.spawn(async move {
            let _live = live;
            let stream = match TcpStream::from_std(std_stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register a connection with its shard; closing it");
                    return;
                }
            };
            serve(stream).await;
        });
    }

    /// Stops every shard and waits for its thread. Call once the sessions have drained:
    /// whatever still runs on a shard is dropped.
    pub async fn shutdown(mut self) {
        for s in &mut self.shards {
            if let Some(stop) = s.stop.take() {
                let _ = stop.send(());
            }
        }
        let threads: Vec<_> = self
            .shards
            .iter_mut()
            .filter_map(|s| s.thread.take())
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Counts a connection as live on its shard until its task ends (or is dropped unrun).
struct LiveGuard(IntGauge);

impl LiveGuard {
    fn new(live: IntGauge) -> LiveGuard {
        live.inc();
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Accepts `n` connections and serves each on the shards: the server writes the shard
    /// that served it and then holds the connection until the client closes.
    async fn connect_through(shards: &SessionShards, n: usize) -> Vec<(TcpStream, u8)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            shards.serve_connection(server, |mut s| async move {
                let shard = current().expect("served on a shard thread") as u8;
                s.write_all(&[shard]).await.unwrap();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
            clients.push(client);
        }
        let mut out = Vec::new();
        for mut c in clients {
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut b))
                .await
                .expect("served in time")
                .unwrap();
            out.push((c, b[0]));
        }
        out
    }

    async fn wait_for_loads(shards: &SessionShards, want: &[usize]) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while shards.loads() != want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("loads {:?}, want {want:?}", shards.loads()));
    }

    #[tokio::test]
    async fn connections_spread_over_the_shards_and_finish_there() {
        let metrics = crate::Metrics::new();
        let shards = SessionShards::start(3, &metrics).unwrap();
        assert_eq!(current(), None, "the test's own thread is no shard");
        let conns = connect_through(&shards, 6).await;
        let mut per_shard = [0; 3];
        for (_, shard) in &conns {
            per_shard[*shard as usize] += 1;
        }
        assert_eq!(per_shard, [2, 2, 2], "least-loaded placement");
        wait_for_loads(&shards, &[2, 2, 2]).await;
        assert!(
            metrics
                .encode()
                .contains("gate_thread_connections{thread=\"1\"} 2"),
            "exported per thread"
        );

        // Closing shard 0's connections frees it: the next two connections both go there.
        let (on_zero, others): (Vec<_>, Vec<_>) = conns.into_iter().partition(|c| c.1 == 0);
        drop(on_zero);
        wait_for_loads(&shards, &[0, 2, 2]).await;
        let more = connect_through(&shards, 2).await;
        assert!(
            more.iter().all(|c| c.1 == 0),
            "{:?}",
            more.iter().map(|c| c.1).collect::<Vec<_>>()
        );

        drop((others, more));
        wait_for_loads(&shards, &[0, 0, 0]).await;
        tokio::time::timeout(Duration::from_secs(10), shards.shutdown())
            .await
            .expect("shards stop");
    }

    #[tokio::test]
    async fn shutdown_ends_connections_still_open() {
        let shards = SessionShards::start(2, &crate::Metrics::new()).unwrap();
        let mut conns = connect_through(&shards, 2).await;
        tokio::time::timeout(Duration::from_secs(10), shards.shutdown())
            .await
            .expect("shards stop with sessions still open");
        // The server side went with its runtime: the client reads end-of-stream.
        for (c, _) in &mut conns {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
                .await
                .expect("closed in time")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
    }
}
