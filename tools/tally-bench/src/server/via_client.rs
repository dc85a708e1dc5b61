//! `tally-bench server --via-client`: the same workload driven through the native client
//! crate (`tally-client`'s [`AsyncClient`]) instead of hand-encoded frames, so a run shows
//! what an application calling the client gets.
//!
//! Each `--connections` is one [`AsyncClient`] on its own OS thread and current-thread
//! tokio runtime (the client opens one socket per server core, shard-aware by default).
//! Each `--pipeline` is one caller task on that runtime that awaits one call at a time:
//! `incr` with `--batch 1`, otherwise `batch` of that many increments. Calls that queue
//! while the client's connection task is busy are packed into one frame by the client
//! itself, so `--pipeline` here is the number of concurrent callers, not a depth of
//! frames. Latency is per call, from the call to its result (closed loop only).
//! Caller `j` of connection `i` draws keys with seed `seed + i * pipeline + j`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tally_client::{AsyncClient, ClientConfig, ClientError};
use tally_protocol::{BoundPolicy, Durability, Op};

use super::connection::ConnectionReport;
use super::{key_chooser, DriveError, DurabilityChoice, KeySource, ServerArgs};

/// What one caller task does.
#[derive(Clone, Copy, Debug)]
struct CallerPlan {
    ops_per_call: u64,
    delta: i64,
    /// Stop after this many calls.
    call_quota: Option<u64>,
    /// Stop at this time.
    deadline: Option<Instant>,
}

fn client_error(error: ClientError) -> DriveError {
    DriveError::Protocol(format!("tally-client: {error}"))
}

fn client_config(args: &ServerArgs) -> ClientConfig {
    ClientConfig {
        durability: match args.durability {
            DurabilityChoice::Server => Durability::ServerDefault,
            DurabilityChoice::Durable => Durability::Durable,
            DurabilityChoice::Relaxed => Durability::Relaxed,
        },
        shard_aware: args.shard_aware,
        // No resends: a benchmark counts what the server answered.
        retries: 0,
        spin: args
            .spin_us
            .map_or(ClientConfig::default().spin, Duration::from_micros),
        ..ClientConfig::default()
    }
}

/// Runs every connection's client and returns one report per connection.
pub fn drive_all(args: &ServerArgs) -> Result<Vec<ConnectionReport>, DriveError> {
    let ops_done = Arc::new(AtomicU64::new(0));
    let barrier = Barrier::new(args.connections + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.connections)
            .map(|index| {
                let (barrier, ops_done) = (&barrier, Arc::clone(&ops_done));
                scope.spawn(move || drive_one(args, index, barrier, ops_done))
            })
            .collect();
        barrier.wait();
        super::show_progress(args, &ops_done, || {
            handles.iter().all(|handle| handle.is_finished())
        });
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a client thread panicked"))
            .collect()
    })
}

/// One connection: a client, its runtime, and `--pipeline` callers.
fn drive_one(
    args: &ServerArgs,
    index: usize,
    barrier: &Barrier,
    ops_done: Arc<AtomicU64>,
) -> Result<ConnectionReport, DriveError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(source) => {
            barrier.wait();
            return Err(DriveError::io("starting a tokio runtime", source));
        }
    };
    runtime.block_on(async {
        let client = AsyncClient::connect_with(args.addr, client_config(args)).await;
        // Every thread reaches the barrier, connected or not, so none waits forever.
        barrier.wait();
        let client = client.map_err(client_error)?;
        let start = Instant::now();
        debug_assert!(args.duration.is_some() || args.ops.is_multiple_of(args.batch));
        let calls_total = args.ops / args.batch;
        let callers_total = (args.connections * args.pipeline) as u64;
        let mut tasks = Vec::with_capacity(args.pipeline);
        for caller in 0..args.pipeline {
            let slot = (index * args.pipeline + caller) as u64;
            let plan = CallerPlan {
                ops_per_call: args.batch,
                delta: args.delta,
                call_quota: args.duration.is_none().then(|| {
                    calls_total / callers_total + u64::from(slot < calls_total % callers_total)
                }),
                deadline: args
                    .duration
                    .map(|seconds| start + Duration::from_secs_f64(seconds)),
            };
            let keys = KeySource::new(key_chooser(args, args.seed.wrapping_add(slot)));
            let (client, ops_done) = (client.clone(), Arc::clone(&ops_done));
            tasks.push(tokio::spawn(run_caller(client, keys, plan, ops_done)));
        }
        let mut report = ConnectionReport {
            started: Some(start),
            ..ConnectionReport::default()
        };
        for task in tasks {
            let caller = task.await.expect("a caller task panicked")?;
            report.requests += caller.requests;
            report.ops += caller.ops;
            report.ops_failed += caller.ops_failed;
            report.latency.merge(&caller.latency);
        }
        report.finished = Some(Instant::now());
        Ok(report)
    })
}

/// One caller: awaits one call at a time until its quota or deadline. A refused
/// increment counts as failed; a failed call (connection lost, timeout) ends the run.
async fn run_caller(
    client: AsyncClient,
    mut keys: KeySource,
    plan: CallerPlan,
    ops_done: Arc<AtomicU64>,
) -> Result<ConnectionReport, DriveError> {
    let mut report = ConnectionReport::default();
    let mut ops: Vec<Op> = Vec::with_capacity(plan.ops_per_call as usize);
    loop {
        let quota_left = plan.call_quota.is_none_or(|quota| report.requests < quota);
        let time_left = plan
            .deadline
            .is_none_or(|deadline| Instant::now() < deadline);
        if !(quota_left && time_left) {
            break;
        }
        let called = Instant::now();
        let failed = if plan.ops_per_call == 1 {
            match client
                .incr(keys.next_key().expect("drawn keys never end"), plan.delta)
                .await
            {
                Ok(_) => 0,
                Err(ClientError::Rejected(_)) => 1,
                Err(error) => return Err(client_error(error)),
            }
        } else {
            ops.clear();
            for _ in 0..plan.ops_per_call {
                ops.push(Op::Add {
                    key: keys.next_key().expect("drawn keys never end").to_vec(),
                    delta: plan.delta,
                    policy: BoundPolicy::Reject,
                });
            }
            let results = client.batch(&ops).await.map_err(client_error)?;
            results.iter().filter(|result| result.is_err()).count() as u64
        };
        let elapsed = called.elapsed();
        // As on the raw path: an error reply is often fast, so timing it would flatter
        // the percentiles; it is counted instead.
        if failed > 0 {
            report.requests_failed += 1;
        } else {
            report.latency.record(elapsed);
        }
        report.requests += 1;
        report.ops += plan.ops_per_call;
        report.ops_failed += failed;
        ops_done.fetch_add(plan.ops_per_call, Ordering::Relaxed);
    }
    Ok(report)
}
