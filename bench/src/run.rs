//! Running one scenario: the workers, what each call does, and what they
//! measure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost_types::Struct;
use prost_types::value::Kind;
use tonic::Status;

use crate::client::{Client, Member};
use crate::{Args, Scenario};
use sessiond::pb;

/// What one worker measures.
pub(crate) struct Tally {
    pub(crate) latency: Histogram<u64>,
    pub(crate) calls: u64,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            calls: 0,
            errors: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, elapsed: Duration, result: Result<(), Status>) {
        self.calls += 1;
        let _ = self.latency.record(elapsed.as_micros().max(1) as u64);
        if let Err(status) = result {
            *self
                .errors
                .entry(format!("{:?}", status.code()))
                .or_default() += 1;
        }
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        let _ = self.latency.add(other.latency);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// A tiny xorshift generator: enough to mix scenarios and pick sessions.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// What one worker carries from call to call.
pub(crate) struct Worker {
    pub(crate) id: usize,
    /// Calls made so far.
    pub(crate) n: u64,
    pub(crate) rng: Rng,
    /// The worker's own session (refresh chains, bucket updates).
    pub(crate) mine: Member,
    /// Sessions it created and may revoke (mixed).
    pub(crate) created: Vec<String>,
}

/// One call of `scenario` by worker `w`.
pub(crate) async fn one(
    scenario: Scenario,
    client: &Client,
    population: &[Member],
    w: &mut Worker,
) -> Result<(), Status> {
    let (id, n) = (w.id, w.n);
    let member = &population[w.rng.below(population.len())];
    match scenario {
        Scenario::Health => client.health().await,
        Scenario::Get => client.get(&member.access, false).await,
        Scenario::GetDb => client.get(&member.access, true).await,
        Scenario::Create => client.create(format!("bench-{id}-{n}")).await.map(|_| ()),
        Scenario::CreateDevice => client
            .create_on(format!("bench-{id}-{n}"), Some(device(n)))
            .await
            .map(|_| ()),
        Scenario::Refresh | Scenario::RefreshDevice => {
            let device = (scenario == Scenario::RefreshDevice).then(|| device(n));
            let result = client.refresh_on(&mut w.mine, device).await;
            if result.is_err() {
                // Start a new chain, so one failure does not fail all later calls.
                if let Ok(fresh) = client.create(format!("bench-chain-{id}-{n}")).await {
                    w.mine = fresh;
                }
            }
            result
        }
        Scenario::BucketGet => client.bucket_get(&member.access).await,
        Scenario::AuthzGrpc => client.authz_grpc(&member.access).await,
        Scenario::AuthzHttp => client.authz_http(&member.access).await,
        Scenario::BucketUpdate => {
            let mut data = Struct::default();
            data.fields.insert(
                format!("k{}", n % 32),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(n as f64)),
                },
            );
            client.bucket_update(&w.mine.access, data).await
        }
        Scenario::Mixed => match w.rng.below(100) {
            0..90 => client.get(&member.access, false).await,
            90..95 => Box::pin(one(Scenario::Refresh, client, population, w)).await,
            // 3% create, 2% revoke. Only sessions this worker created are
            // revoked, so the population stays whole for the scenarios (and
            // rounds) after this one; with none left, a revoke is a create.
            roll => match w.created.pop() {
                Some(handle) if roll >= 98 => client.revoke(handle).await,
                popped => {
                    w.created.extend(popped);
                    let m = client.create(format!("bench-mixed-{id}-{n}")).await?;
                    w.created.push(m.handle);
                    Ok(())
                }
            },
        },
    }
}

pub(crate) async fn run(
    scenario: Scenario,
    clients: &[Client],
    population: Arc<Vec<Member>>,
    args: &Args,
    warmup: Duration,
    duration: Duration,
) -> Tally {
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for m in 0..args.concurrency {
            let id = c * args.concurrency + m;
            let (client, population) = (client.clone(), population.clone());
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                let mine = match client.create(format!("bench-own-{id}")).await {
                    Ok(m) => m,
                    Err(_) => population[id % population.len()].clone(),
                };
                let mut w = Worker {
                    id,
                    n: 0,
                    rng: Rng(
                        0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)
                    ),
                    mine,
                    created: Vec::new(),
                };
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    w.n += 1;
                    let result = one(scenario, &client, &population, &mut w).await;
                    if now >= measure_from {
                        tally.record(now.elapsed(), result);
                    }
                }
                tally
            }));
        }
    }
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await.expect("a worker panicked"));
    }
    total
}

/// The device a browser's calls name: an address that varies, a current
/// browser's user agent and a label.
fn device(n: u64) -> pb::Device {
    pb::Device {
        ip_address: format!("203.0.113.{}", n % 256),
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                     (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
            .into(),
        label: "Chrome on macOS".into(),
    }
}
