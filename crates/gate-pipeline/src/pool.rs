//! Bounded upstream connection pools with metrics.
//!
//! A pool lends at most `max_connections` connections at once. A session asks for one with
//! [`Pool::acquire`]; it waits (counted in `gate_connpool_waiters`) up to the acquire timeout,
//! then gets [`PoolError::Exhausted`]. A lent connection comes back with
//! [`PooledConn::release`] once the handler has reset it, so no session state leaks to the
//! next user; dropping it instead closes it. Idle connections older than the idle timeout are
//! closed by [`Pool::reap_idle`], which the connector runs periodically.

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

impl<C: Send + 'static> Pool<C> {
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

        while let Some(mut idle) = self.pop_idle() {
            if idle.since.elapsed() < self.inner.idle_timeout && still_usable(&mut idle.conn) {
                return Ok(self.lend(idle.conn, permit));
            }
        }
        let conn = connect().await.map_err(PoolError::Connect)?;
        Ok(self.lend(conn, permit))
    }

    fn pop_idle(&self) -> Option<Idle<C>> {
        let got = self.inner.idle.lock().expect("pool lock").pop();
        if got.is_some() {
            self.inner.metrics.idle.dec();
        }
        got
    }

    fn lend(&self, conn: C, permit: OwnedSemaphorePermit) -> PooledConn<C> {
        self.inner.metrics.active.inc();
        PooledConn {
            conn: Some(conn),
            _permit: permit,
            pool: self.inner.clone(),
        }
    }

    /// Closes idle connections older than the idle timeout. Returns how many it closed.
    pub fn reap_idle(&self) -> usize {
        let expired: Vec<Idle<C>> = {
            let mut idle = self.inner.idle.lock().expect("pool lock");
            let (keep, expired) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.since.elapsed() < self.inner.idle_timeout);
            *idle = keep;
            expired
        };
        self.inner.metrics.idle.sub(expired.len() as i64);
        expired.len()
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        let all = std::mem::take(&mut *self.inner.idle.lock().expect("pool lock"));
        self.inner.metrics.idle.sub(all.len() as i64);
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
pub struct PooledConn<C> {
    conn: Option<C>,
    _permit: OwnedSemaphorePermit,
    pool: Arc<Inner<C>>,
}

impl<C> PooledConn<C> {
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
            });
            self.pool.metrics.idle.inc();
        }
    }
}

impl<C> Drop for PooledConn<C> {
    fn drop(&mut self) {
        self.pool.metrics.active.dec();
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
}
