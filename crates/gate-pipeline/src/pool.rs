//! Bounded upstream connection pools with metrics.
//!
//! A pool lends at most `max_connections` connections at once. A session asks for one with
//! [`Pool::acquire`]; it waits (counted in `gate_connpool_waiters`) up to the acquire timeout,
//! then gets [`PoolError::Exhausted`]. A lent connection comes back with
//! [`PooledConn::release`] once the handler has reset it, so no session state leaks to the
//! next user; dropping it instead closes it. Idle connections older than the idle timeout are
//! closed by [`Pool::reap_idle`], which the connector runs periodically. Every connection the
//! pool closes says goodbye first ([`Pooled::say_goodbye`]), so the server logs a client that
//! left, not one that was cut off.
//!
//! A tokio socket belongs to the runtime that registered it, and every session shard
//! ([`crate::shards`]) is a runtime of its own. Idle connections remember their shard; a
//! session takes one of its own shard's when there is one, and otherwise moves the one it
//! takes to its shard ([`Pooled::rehome`]), so that its upstream I/O is never woken
//! through another thread.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gate_core::config::PoolConfig;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum PoolError<E> {
    #[error(
        "no upstream connection for {resource} became free within {waited:?} (pool of {max} exhausted)"
    )]
    Exhausted {
        resource: String,
        waited: Duration,
        max: usize,
    },
    #[error(transparent)]
    Connect(E),
}

struct Idle<C> {
    conn: C,
    since: Instant,
    /// The shard whose reactor the connection's socket is registered with.
    shard: Option<usize>,
}

struct PoolMetrics {
    active: IntGauge,
    idle: IntGauge,
    waiters: IntGauge,
    wait: Histogram,
    exhausted: IntCounter,
}

struct Inner<C> {
    resource: String,
    max: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle<C>>>,
    idle_timeout: Duration,
    acquire_timeout: Duration,
    metrics: PoolMetrics,
}

/// What a pool needs of its connections besides holding them.
pub trait Pooled: Sized {
    /// Re-registers the connection's sockets with the calling thread's runtime (they
    /// belong to the runtime that opened them).
    fn rehome(self) -> std::io::Result<Self>;

    /// Tells the server the client is leaving (PostgreSQL Terminate, MySQL COM_QUIT) just
    /// before the connection is closed: best effort, without waiting. Servers count and log
    /// connections closed without it as aborted (MariaDB's `Aborted_clients`).
    fn say_goodbye(&mut self) {}
}

/// Writes `bytes` to `stream` now if the socket takes them; never waits (a goodbye).
pub fn send_now(stream: &tokio::net::TcpStream, bytes: &[u8]) {
    let _ = stream.try_write(bytes);
}

/// Moves a socket to the calling thread's runtime (deregistered from its old one first).
pub fn rehome_tcp(stream: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::from_std(stream.into_std()?)
}

/// A pool of upstream connections of type `C` for one resource.
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Pooled + Send + 'static> Pool<C> {
    pub fn new(resource: &str, cfg: &PoolConfig, metrics: &Metrics) -> Pool<C> {
        let l = &[resource];
        Pool {
            inner: Arc::new(Inner {
                resource: resource.to_string(),
                max: cfg.max_connections,
                permits: Arc::new(Semaphore::new(cfg.max_connections)),
                idle: Mutex::new(Vec::new()),
                idle_timeout: cfg.idle_timeout,
                acquire_timeout: cfg.acquire_timeout,
                metrics: PoolMetrics {
                    active: metrics.connpool_active.with_label_values(l),
                    idle: metrics.connpool_idle.with_label_values(l),
                    waiters: metrics.connpool_waiters.with_label_values(l),
                    wait: metrics.connpool_wait.with_label_values(l),
                    exhausted: metrics.connpool_exhausted.with_label_values(l),
                },
            }),
        }
    }

    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// Lends a connection: a recent idle one that `still_usable` accepts, or a new one from
    /// `connect`. Waits for a free slot up to the pool's acquire timeout.
    pub async fn acquire<E, F, Fut>(
        &self,
        connect: F,
        still_usable: impl Fn(&mut C) -> bool,
    ) -> Result<PooledConn<C>, PoolError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let m = &self.inner.metrics;
        let started = Instant::now();
        let permit = match self.inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                m.waiters.inc();
                let waited = tokio::time::timeout(
                    self.inner.acquire_timeout,
                    self.inner.permits.clone().acquire_owned(),
                )
                .await;
                m.waiters.dec();
                match waited {
                    Ok(Ok(p)) => p,
                    _ => {
                        m.exhausted.inc();
                        m.wait.observe(started.elapsed().as_secs_f64());
                        return Err(PoolError::Exhausted {
                            resource: self.inner.resource.clone(),
                            waited: started.elapsed(),
                            max: self.inner.max,
                        });
                    }
                }
            }
        };
        m.wait.observe(started.elapsed().as_secs_f64());

        let here = crate::shards::current();
        while let Some(mut idle) = self.pop_idle(here) {
            if idle.since.elapsed() >= self.inner.idle_timeout || !still_usable(&mut idle.conn) {
                idle.conn.say_goodbye();
                continue;
            }
            if idle.shard == here {
                return Ok(self.lend(idle.conn, permit, here));
            }
            match idle.conn.rehome() {
                Ok(conn) => return Ok(self.lend(conn, permit, here)),
                Err(e) => {
                    tracing::debug!(resource = %self.inner.resource, error = %e, "could not move an idle upstream connection to this thread; closing it");
                }
            }
        }
        let conn = connect().await.map_err(PoolError::Connect)?;
        Ok(self.lend(conn, permit, here))
    }

    /// The most recently returned idle connection, preferring one of shard `here`.
    fn pop_idle(&self, here: Option<usize>) -> Option<Idle<C>> {
        let got = {
            let mut idle = self.inner.idle.lock().expect("pool lock");
            match idle.iter().rposition(|i| i.shard == here) {
                Some(at) => Some(idle.remove(at)),
                None => idle.pop(),
            }
        };
        if got.is_some() {
            self.inner.metrics.idle.dec();
        }
        got
    }

    fn lend(&self, conn: C, permit: OwnedSemaphorePermit, shard: Option<usize>) -> PooledConn<C> {
        self.inner.metrics.active.inc();
        PooledConn {
            conn: Some(conn),
            _permit: permit,
            pool: self.inner.clone(),
            shard,
        }
    }

    /// Closes idle connections older than the idle timeout. Returns how many it closed.
    pub fn reap_idle(&self) -> usize {
        let mut expired: Vec<Idle<C>> = {
            let mut idle = self.inner.idle.lock().expect("pool lock");
            let (keep, expired) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.since.elapsed() < self.inner.idle_timeout);
            *idle = keep;
            expired
        };
        self.inner.metrics.idle.sub(expired.len() as i64);
        for gone in &mut expired {
            gone.conn.say_goodbye();
        }
        expired.len()
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        let mut all = std::mem::take(&mut *self.inner.idle.lock().expect("pool lock"));
        self.inner.metrics.idle.sub(all.len() as i64);
        for gone in &mut all {
            gone.conn.say_goodbye();
        }
    }

    pub fn idle_count(&self) -> usize {
        self.inner.idle.lock().expect("pool lock").len()
    }

    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }
}

/// A connection lent by a [`Pool`]. Give it back with [`PooledConn::release`] after resetting
/// it; dropping it closes the connection and frees the slot.
pub struct PooledConn<C: Pooled> {
    conn: Option<C>,
    _permit: OwnedSemaphorePermit,
    pool: Arc<Inner<C>>,
    /// The shard whose reactor the socket is registered with (where it was opened).
    shard: Option<usize>,
}

impl<C: Pooled> PooledConn<C> {
    pub fn get_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect("present until released")
    }

    pub fn get(&self) -> &C {
        self.conn.as_ref().expect("present until released")
    }

    /// Returns a clean connection to the pool for the next session.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().expect("pool lock").push(Idle {
                conn,
                since: Instant::now(),
                shard: self.shard,
            });
            self.pool.metrics.idle.inc();
        }
    }
}

impl<C: Pooled> Drop for PooledConn<C> {
    fn drop(&mut self) {
        self.pool.metrics.active.dec();
        // Not released: the handler closes it.
        if let Some(conn) = &mut self.conn {
            conn.say_goodbye();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, acquire_ms: u64, idle_ms: u64) -> PoolConfig {
        PoolConfig {
            max_connections: max,
            idle_timeout: Duration::from_millis(idle_ms),
            acquire_timeout: Duration::from_millis(acquire_ms),
        }
    }

    async fn new_conn(n: u32) -> Result<u32, String> {
        Ok(n)
    }

    /// A stand-in connection: the number of a connection, `+ 100` for each move.
    impl Pooled for u32 {
        fn rehome(self) -> std::io::Result<u32> {
            Ok(self + 100)
        }
    }

    #[tokio::test]
    async fn bounded_reuses_and_reports_exhaustion() {
        let metrics = Metrics::new();
        let pool: Pool<u32> = Pool::new("db", &cfg(1, 50, 60_000), &metrics);
        let a = pool.acquire(|| new_conn(1), |_| true).await.unwrap();
        assert_eq!(*a.get(), 1);
        let err = pool.acquire(|| new_conn(2), |_| true).await.err().unwrap();
        assert!(matches!(err, PoolError::Exhausted { max: 1, .. }), "{err}");
        assert_eq!(
            metrics.connpool_exhausted.with_label_values(&["db"]).get(),
            1
        );
        a.release();
        let b = pool.acquire(|| new_conn(3), |_| true).await.unwrap();
        assert_eq!(*b.get(), 1, "the released connection is reused");
        drop(b);
        assert_eq!(
            pool.idle_count(),
            0,
            "a dropped connection is closed, not pooled"
        );
        let c = pool.acquire(|| new_conn(4), |_| true).await.unwrap();
        assert_eq!(*c.get(), 4);
        assert_eq!(metrics.connpool_active.with_label_values(&["db"]).get(), 1);
    }

    #[tokio::test]
    async fn waiter_gets_released_connection_and_unusable_idle_is_skipped() {
        let metrics = Metrics::new();
        let pool: Pool<u32> = Pool::new("db", &cfg(1, 5_000, 60_000), &metrics);
        let a = pool.acquire(|| new_conn(1), |_| true).await.unwrap();
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire(|| new_conn(2), |c| *c != 1).await });
        while metrics.connpool_waiters.with_label_values(&["db"]).get() == 0 {
            tokio::task::yield_now().await;
        }
        a.release();
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(
            *got.get(),
            2,
            "idle connection 1 was refused by still_usable"
        );
    }

    #[tokio::test]
    async fn reaps_expired_idle_connections() {
        let metrics = Metrics::new();
        let pool: Pool<u32> = Pool::new("db", &cfg(2, 50, 1), &metrics);
        pool.acquire(|| new_conn(1), |_| true)
            .await
            .unwrap()
            .release();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(pool.reap_idle(), 1);
        assert_eq!(metrics.connpool_idle.with_label_values(&["db"]).get(), 0);
    }

    /// A socket moved to another runtime keeps working after the runtime that opened it is
    /// gone: it no longer depends on it.
    #[test]
    fn a_moved_socket_no_longer_needs_the_runtime_that_opened_it() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (first, second) = (runtime(), runtime());
        let stream = first
            .block_on(tokio::net::TcpStream::connect(addr))
            .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let moved = second.block_on(async { rehome_tcp(stream) }).unwrap();
        drop(first);
        second.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut moved = moved;
            moved.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            peer.write_all(b"pong").unwrap();
            let mut back = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), moved.read_exact(&mut back))
                .await
                .expect("read in time")
                .unwrap();
            assert_eq!(&back, b"pong");
        });
    }

    /// One session on each of two shards: each acquires a connection (a new one numbered
    /// `open(shard)` if none is idle), holds it until both have one, and returns it.
    /// Returns (shard, connection) per session, sorted.
    async fn one_session_per_shard(
        shards: &crate::shards::SessionShards,
        pool: &Pool<u32>,
        open: fn(usize) -> u32,
    ) -> [(usize, u32); 2] {
        use tokio::net::{TcpListener, TcpStream};
        // Earlier sessions have ended, so these are placed one per shard.
        while shards.loads() != [0, 0] {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let both = Arc::new(tokio::sync::Barrier::new(2));
        for _ in 0..2 {
            let (pool, tx, both) = (pool.clone(), tx.clone(), both.clone());
            let _client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            shards.serve_connection(server, move |_s| async move {
                let shard = crate::shards::current().unwrap();
                let c = pool
                    .acquire(|| new_conn(open(shard)), |_| true)
                    .await
                    .unwrap();
                both.wait().await;
                let got = *c.get();
                c.release();
                tx.send((shard, got)).await.unwrap();
            });
        }
        let mut got = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        got.sort();
        got
    }

    /// Sessions on two shards each open a connection and return it; each shard then gets
    /// its own connection back, whatever order they were returned in, and a caller with no
    /// idle connection of its own takes another's, moved to it.
    #[tokio::test]
    async fn a_session_gets_a_connection_opened_on_its_own_shard() {
        let metrics = Metrics::new();
        let shards = crate::shards::SessionShards::start(2, &metrics).unwrap();
        let pool: Pool<u32> = Pool::new("db", &cfg(4, 5_000, 60_000), &metrics);

        let opened = one_session_per_shard(&shards, &pool, |shard| 10 + shard as u32).await;
        assert_eq!(opened, [(0, 10), (1, 11)]);
        assert_eq!(pool.idle_count(), 2);

        let reused = one_session_per_shard(&shards, &pool, |_| 99).await;
        assert_eq!(
            reused,
            [(0, 10), (1, 11)],
            "each shard got its own connection"
        );

        // Off the shards (no shard of its own), an idle connection is taken and moved here.
        let any = pool.acquire(|| new_conn(99), |_| true).await.unwrap();
        assert!([110, 111].contains(any.get()), "moved: {}", any.get());
        drop(any);
        shards.shutdown().await;
    }
}
