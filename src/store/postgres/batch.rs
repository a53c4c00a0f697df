//! Statements batched across calls: concurrent calls of one kind (reads
//! of sessions by handle, session inserts, compare-and-swap updates)
//! share one statement, one round trip and, for writes, one commit,
//! instead of a statement and a transaction each: the group commit of the
//! sled store's log, done with PostgreSQL's own transactions.
//!
//! A call queues what it asks and waits for its answer; a collector task
//! (started at the kind's first call) takes everything queued, up to
//! [`MAX_BATCH`], and hands it to a task that runs it on one pooled
//! connection ([`Job::run`]), with at most a few batches of the kind in
//! flight. Under load a batch gathers the calls that arrived while the
//! previous ones ran; alone, a call costs one task hand-over more than a
//! direct statement. The calling task holds no connection while it waits
//! and a batch holds one, so a call never holds two. A call is answered
//! only once the batch's statement has returned, which for a write is
//! after its transaction committed. This module runs no statement itself:
//! what a batch does, and how one failed row is kept from failing the
//! others, belongs to its [`Job`].

use std::future::Future;
use std::sync::{Arc, OnceLock};

use deadpool_postgres::{Client, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{Failed, checkout};
use crate::store::StoreError;

/// Most calls one batch takes.
const MAX_BATCH: usize = 256;

/// A limit on batches in flight, each on a connection of its own: at most
/// `max`, never more than half the pool, and at least one.
pub(super) fn in_flight(pool_size: usize, max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new((pool_size / 2).clamp(1, max)))
}

/// One kind of batched call.
pub(super) trait Job: Send + Sync + 'static {
    /// What one call asks.
    type Ask: Send + 'static;
    /// What it is answered.
    type Answer: Send + 'static;

    /// Runs a batch on `client`: exactly one answer per ask, in order.
    fn run(
        &self,
        client: &Client,
        asks: &[Self::Ask],
    ) -> impl Future<Output = Vec<Result<Self::Answer, Failed>>> + Send;
}

type Reply<J> = oneshot::Sender<Result<<J as Job>::Answer, Failed>>;

/// The queue of one kind of call.
pub(super) struct Batched<J: Job> {
    job: Arc<J>,
    pool: Pool,
    in_flight: Arc<Semaphore>,
    queue: OnceLock<mpsc::UnboundedSender<(J::Ask, Reply<J>)>>,
}

impl<J: Job> Batched<J> {
    /// Calls of `job` on `pool`, as many batches in flight as `in_flight`
    /// has permits.
    pub(super) fn new(job: J, pool: Pool, in_flight: Arc<Semaphore>) -> Self {
        Self {
            job: Arc::new(job),
            pool,
            in_flight,
            queue: OnceLock::new(),
        }
    }

    /// `ask`'s answer, run in a batch with whatever else is queued.
    pub(super) async fn call(&self, ask: J::Ask) -> Result<J::Answer, Failed> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.get_or_init(|| self.start());
        queue.send((ask, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Starts the collector: it runs until the store (the queue's only
    /// sender) is dropped.
    fn start(&self) -> mpsc::UnboundedSender<(J::Ask, Reply<J>)> {
        let (queue, mut calls) = mpsc::unbounded_channel();
        let (job, pool, in_flight) = (self.job.clone(), self.pool.clone(), self.in_flight.clone());
        tokio::spawn(async move {
            while let Some(first) = calls.recv().await {
                // Calls that arrive while every batch is busy wait here,
                // and go together in the next one.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match calls.try_recv() {
                        Ok(call) => batch.push(call),
                        Err(_) => break,
                    }
                }
                tokio::spawn(run(job.clone(), pool.clone(), batch, permit));
            }
        });
        queue
    }
}

/// Runs one batch on one connection and answers each of its calls.
async fn run<J: Job>(
    job: Arc<J>,
    pool: Pool,
    batch: Vec<(J::Ask, Reply<J>)>,
    permit: OwnedSemaphorePermit,
) {
    let (asks, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let answers = match checkout(&pool).await {
        Ok(client) => job.run(&client, &asks).await,
        Err(e) => asks.iter().map(|_| Err(copy(&e).into())).collect(),
    };
    drop(permit);
    // A call that gave up (it was cancelled) is not waiting; one left
    // without an answer is told the store stopped.
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// The same failure again, for another call of a batch.
pub(super) fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Locked(m) => StoreError::Locked(m.clone()),
        StoreError::Backend(m) => StoreError::Backend(m.clone()),
        StoreError::Io(m) => StoreError::Io(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
    }
}

/// A call whose collector is gone: the runtime is shutting down.
fn stopped() -> Failed {
    StoreError::Unavailable("the session store is shutting down".into()).into()
}
