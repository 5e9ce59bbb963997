//! A closed-loop load generator: N clients, each sending its next request as
//! soon as the previous one is answered, for a fixed time. Every latency is
//! recorded in an HDR histogram, so p99 is exact to three significant digits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

/// The two operations the store benchmark measures, implemented for each
/// system under test.
pub trait KvTarget: Clone + Send + Sync + 'static {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<()>> + Send;
    /// A linearizable single-key read; true when the key exists.
    fn get(&self, key: Vec<u8>) -> impl Future<Output = Result<bool>> + Send;
}

/// Which operation a run sends.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    Put,
    Get,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub operations: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl LoadResult {
    pub fn ops_per_sec(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
}

/// Keys are 8 bytes, as the benchmark specifies; the key space is bounded so
/// reads hit keys that the preload wrote.
pub const KEY_SPACE: u64 = 10_000;
/// Values are 256 bytes.
pub const VALUE_BYTES: usize = 256;
/// Latencies above this are clamped into the top bucket (a request that slow
/// is a failure of the system, and the histogram must stay bounded).
pub const LATENCY_MAX_US: u64 = 60_000_000;

pub fn key(index: u64) -> Vec<u8> {
    (index % KEY_SPACE).to_be_bytes().to_vec()
}

/// Runs `clients` concurrent closed loops against the targets (client `i`
/// uses `targets[i % targets.len()]`) for `duration`.
pub async fn run<T: KvTarget>(
    targets: &[T],
    operation: Operation,
    clients: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let value = Arc::new(vec![0x5a_u8; VALUE_BYTES]);
    let targets = targets.to_vec();
    closed_loop(clients, duration, move |client, index| {
        let target = targets[client % targets.len()].clone();
        let value = value.clone();
        async move {
            match operation {
                Operation::Put => target.put(key(index), value.to_vec()).await,
                Operation::Get => target.get(key(index)).await.map(|_| ()),
            }
        }
    })
    .await
}

/// Runs `clients` concurrent closed loops for `duration`: client `c` calls
/// `call(c, index)` with an index that grows by one per call and starts at a
/// different point for each client, so that clients spread over keys.
pub async fn closed_loop<F, Fut>(clients: usize, duration: Duration, call: F) -> Result<LoadResult>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram()?;
            let mut errors = 0;
            let mut index = (client as u64).wrapping_mul(7_919);
            while Instant::now() < deadline {
                index = index.wrapping_add(1);
                let sent = Instant::now();
                let outcome = call(client, index).await;
                let latency_us = sent.elapsed().as_micros() as u64;
                match outcome {
                    Ok(()) => histogram.saturating_record(latency_us.clamp(1, LATENCY_MAX_US)),
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((histogram, errors))
        }));
    }
    let mut histogram = new_histogram()?;
    let mut errors = 0;
    for task in tasks {
        let (client_histogram, client_errors) = task.await??;
        histogram.add(&client_histogram)?;
        errors += client_errors;
    }
    Ok(LoadResult {
        operations: histogram.len(),
        errors,
        elapsed: started.elapsed(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
    })
}

pub fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?)
}

/// Writes every key of the key space once, so reads find values.
pub async fn preload<T: KvTarget>(target: &T, clients: usize) -> Result<()> {
    let value = vec![0x5a_u8; VALUE_BYTES];
    let mut tasks = Vec::new();
    for client in 0..clients as u64 {
        let target = target.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut index = client;
            while index < KEY_SPACE {
                target.put(key(index), value.clone()).await?;
                index += clients as u64;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
