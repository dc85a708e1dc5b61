//! The async client for tokio: the same operations as [`crate::Client`], callable from
//! many tasks at once through a cheap clonable handle.
//!
//! Each server core has one connection driven by its own task
//! ([`crate::async_connection`]); a call splits its operations by owning core, queues them
//! on those tasks, and awaits the results. Calls that queue up while a task is busy are
//! packed together into one batch frame, so many concurrent `incr`s cost the server a few
//! frames rather than one each, with no batching code in the caller.
//!
//! When a task's reconnect finds a different shard map (the server restarted with other
//! cores or partitions), the next call rebuilds the routes from it before routing.
//!
//! Every connection task runs on the runtime `connect` ran on (its `Handle` is kept),
//! including the tasks a shard map change starts later: a call made from another
//! (perhaps short-lived) runtime, or `shard_map()` called outside any runtime, never
//! spawns there, so no method panics for lack of a runtime and no task dies with a
//! caller's runtime. Connecting opens at most one connection per route at a time: the
//! main connection is closed before the shard connections open unless it serves a shard.
//!
//! Cancelling a call does not cancel its effect. Dropping a call's future (an aborted
//! task, a losing `select!` branch, `tokio::time::timeout`) withdraws the call only if its
//! frame has not been written yet; once written, the server applies it, retries
//! included, and nobody is told. To bound a call, set `ClientConfig::call_timeout`: a
//! call that runs out of it reports `ClientError::OutcomeUnknown` when it may have been
//! applied. A rate limiter that gives up on a slow `incr` has still used up that quota
//! (it lets fewer requests through than its limit, never more), and one that then calls
//! again for the same request counts it twice.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, PoisonError, RwLock};

use tally_protocol::{BoundPolicy, Durability, HelloReply, Op, BATCH_OPS_MAX};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::async_connection::{
    open, BatchCall, Call, ConnectionTask, Control, ControlReply, MapWatch, CALL_QUEUE_DEPTH,
};
use crate::async_pipeline::AsyncPipeline;
use crate::blocking::{
    first_answering_async, negate, open_deadline, resolve, routes_differ, shard_addrs,
};
use crate::config::ClientConfig;
use crate::dispatch::{check_keyed_batch, check_keys};
use crate::error::ClientError;
use crate::outcome::{partial_results, Bounds, OpResult, Outcome};

/// A shard-aware async client; clone it freely, all clones share the connections.
///
/// A call's future may be dropped, but a call already sent still runs to completion on
/// the server (see the module docs): bound calls with `ClientConfig::call_timeout`.
#[derive(Clone, Debug)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    main_addr: SocketAddr,
    /// Replaced whole when a reconnect brings a new shard map; calls route with a
    /// snapshot taken when they start.
    routing: RwLock<Arc<Routing>>,
    map_watch: Arc<MapWatch>,
    /// The runtime `connect` ran on: every connection task is spawned there, whoever
    /// triggers it (a call from another runtime, or `shard_map()` from plain code).
    runtime: Handle,
}

/// The shard map and, per connection in route order, its address and task queue.
#[derive(Debug)]
struct Routing {
    hello: Arc<HelloReply>,
    queues: Vec<(SocketAddr, mpsc::Sender<Call>)>,
}

impl Routing {
    /// Hands `call` to the connection task of `core`.
    async fn send(&self, core: usize, call: Call) -> Result<(), ClientError> {
        self.queues[core]
            .1
            .send(call)
            .await
            .map_err(|_| task_gone())
    }
}

impl AsyncClient {
    /// Connects with the default configuration. Must be called within a tokio runtime:
    /// the client's connection tasks run on that runtime for the client's whole life
    /// (also those a shard map change starts later), so it must outlive the client;
    /// calls may then be made from any runtime.
    pub async fn connect(
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<AsyncClient, ClientError> {
        AsyncClient::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects to the main address, reads the shard map, and starts one task per core.
    pub async fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        config: ClientConfig,
    ) -> Result<AsyncClient, ClientError> {
        config.validate()?;
        let runtime = Handle::try_current().map_err(|_| {
            ClientError::InvalidConfig(
                "AsyncClient::connect must run within a tokio runtime".into(),
            )
        })?;
        // The first address that answers is the main address, as for the blocking client.
        let addrs = resolve(addr)?;
        let (main_addr, (main_stream, hello)) = first_answering_async(&addrs, |candidate| {
            open(candidate, &config, open_deadline(&config).into())
        })
        .await?;
        let map_watch = Arc::new(MapWatch::default());
        let addrs = shard_addrs(main_addr, &hello, config.shard_aware);
        // The main connection is kept only if it serves a shard: closed first otherwise,
        // so connecting never needs more connections than the client keeps (a server's
        // `--max-connections` sized for clients x cores admits it).
        let mut main_stream = Some(main_stream).filter(|_| addrs.contains(&main_addr));
        let mut queues = Vec::new();
        for addr in addrs {
            // Opened now, so a bad shard port shows at connect time.
            let stream = match main_stream.take_if(|_| addr == main_addr) {
                Some(stream) => stream,
                None => open_on_map(addr, &config, &hello).await?,
            };
            let sender = spawn_task(
                &runtime,
                addr,
                main_addr,
                &config,
                Some(stream),
                &hello,
                &map_watch,
            );
            queues.push((addr, sender));
        }
        let routing = Routing {
            hello: Arc::new(hello),
            queues,
        };
        Ok(AsyncClient {
            inner: Arc::new(Inner {
                config,
                main_addr,
                routing: RwLock::new(Arc::new(routing)),
                map_watch,
                runtime,
            }),
        })
    }

    /// The shard map in use: the one the server sent at connect time, or the newer one
    /// a reconnect found.
    pub fn shard_map(&self) -> Arc<HelloReply> {
        self.routing().hello.clone()
    }

    /// The routes to use now, adopting a shard map a reconnect found since the last call.
    fn routing(&self) -> Arc<Routing> {
        if let Some(hello) = self.inner.map_watch.take() {
            self.adopt_shard_map(hello);
        }
        self.inner
            .routing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rebuilds the routes from `hello`: a connection whose address is still a shard's
    /// keeps its task (and what it has in flight); new addresses get a task that connects
    /// on its first call; tasks no longer routed to end once their queued calls are done.
    fn adopt_shard_map(&self, hello: HelloReply) {
        let inner = &self.inner;
        let mut routing = inner
            .routing
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !routes_differ(&routing.hello, &hello) {
            return;
        }
        let queues = shard_addrs(inner.main_addr, &hello, inner.config.shard_aware)
            .into_iter()
            .map(|addr| {
                let kept = routing.queues.iter().find(|(old, _)| *old == addr);
                let sender = match kept {
                    Some((_, sender)) => sender.clone(),
                    None => spawn_task(
                        &inner.runtime,
                        addr,
                        inner.main_addr,
                        &inner.config,
                        None,
                        &hello,
                        &inner.map_watch,
                    ),
                };
                (addr, sender)
            })
            .collect();
        *routing = Arc::new(Routing {
            hello: Arc::new(hello),
            queues,
        });
    }

    /// Runs many operations with the configured durability.
    pub async fn batch<K: AsRef<[u8]>>(&self, ops: &[Op<K>]) -> Result<Vec<OpResult>, ClientError> {
        self.batch_with(ops, self.inner.config.durability).await
    }

    /// Runs many operations, split per owning core; one result per operation, in order.
    pub async fn batch_with<K: AsRef<[u8]>>(
        &self,
        ops: &[Op<K>],
        durability: Durability,
    ) -> Result<Vec<OpResult>, ClientError> {
        check_keys(ops)?;
        let deadline = Instant::now() + self.inner.config.call_timeout;
        let routing = self.routing();
        let shard_aware = self.inner.config.shard_aware;
        let mut by_core: Vec<Vec<usize>> = vec![Vec::new(); routing.queues.len()];
        for (index, op) in ops.iter().enumerate() {
            let core = if shard_aware {
                routing.hello.owner_of_key(op.key())
            } else {
                0
            };
            by_core[core].push(index);
        }
        let mut waiting = Vec::new();
        for (core, indices) in by_core.iter().enumerate() {
            for chunk in indices.chunks(BATCH_OPS_MAX) {
                let (reply, receiver) = oneshot::channel();
                let call = Call::Batch(BatchCall {
                    ops: chunk
                        .iter()
                        .map(|&index| ops[index].to_owned_op())
                        .collect(),
                    durability,
                    idempotency_key: None,
                    reply,
                    deadline,
                });
                routing.send(core, call).await?;
                waiting.push((chunk, receiver));
            }
        }
        let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
        // Operations that change counters, sent, and not answered.
        let mut unknown = vec![false; ops.len()];
        // The first failure fails the call. If a part that changes counters was answered
        // (applied), the call is `PartlyApplied`, with each operation's fate; else, if
        // another such part may have been applied, its outcome is unknown.
        let mut failure: Option<ClientError> = None;
        let mut answered_mutations = false;
        let mut others_maybe_applied = false;
        for (chunk, receiver) in waiting {
            let mutates = chunk.iter().any(|&index| ops[index].is_mutation());
            match receiver.await.unwrap_or_else(|_| Err(task_gone())) {
                Ok(chunk_results) => {
                    answered_mutations |= mutates;
                    for (&index, result) in chunk.iter().zip(chunk_results) {
                        results[index] = Some(result);
                    }
                }
                Err(error) => {
                    // The task settled the error: `OutcomeUnknown` if the frame may have
                    // been applied, anything else if it was not, unless the task is gone
                    // (it may have written the frame first).
                    let maybe_applied = matches!(
                        error,
                        ClientError::OutcomeUnknown { .. } | ClientError::TaskStopped
                    );
                    if maybe_applied {
                        for &index in chunk {
                            unknown[index] = ops[index].is_mutation();
                        }
                    }
                    match failure {
                        None => failure = Some(error),
                        Some(_) => others_maybe_applied |= mutates && !error.is_definitive(),
                    }
                }
            }
        }
        if let Some(cause) = failure {
            if answered_mutations {
                let results = partial_results(results, &unknown);
                let cause = Box::new(cause);
                return Err(ClientError::PartlyApplied { results, cause });
            }
            return Err(cause.settle(others_maybe_applied));
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every chunk was answered"))
            .collect())
    }

    /// Runs `ops` as one request under the caller's `idempotency_key`, in a frame of its
    /// own sent to the core that owns the first operation's key; see
    /// [`crate::Client::batch_idempotent`] for the key's rules and the crate docs for the
    /// retry procedure after [`ClientError::OutcomeUnknown`].
    pub async fn batch_idempotent<K: AsRef<[u8]>>(
        &self,
        ops: &[Op<K>],
        durability: Durability,
        idempotency_key: u128,
    ) -> Result<Vec<OpResult>, ClientError> {
        let Some(first) = check_keyed_batch(ops)? else {
            return Ok(Vec::new());
        };
        let deadline = Instant::now() + self.inner.config.call_timeout;
        let routing = self.routing();
        let core = if self.inner.config.shard_aware {
            routing.hello.owner_of_key(first.key())
        } else {
            0
        };
        let (reply, receiver) = oneshot::channel();
        let call = Call::Batch(BatchCall {
            ops: ops.iter().map(Op::to_owned_op).collect(),
            durability,
            idempotency_key: Some(idempotency_key),
            reply,
            deadline,
        });
        routing.send(core, call).await?;
        receiver.await.unwrap_or_else(|_| Err(task_gone()))
    }

    /// Runs one operation under the caller's `idempotency_key`; see
    /// [`AsyncClient::batch_idempotent`].
    pub async fn execute_idempotent<K: AsRef<[u8]>>(
        &self,
        op: &Op<K>,
        durability: Durability,
        idempotency_key: u128,
    ) -> Result<Outcome, ClientError> {
        let ops = std::slice::from_ref(op);
        let mut results = self
            .batch_idempotent(ops, durability, idempotency_key)
            .await?;
        Ok(results.pop().expect("one result per operation")?)
    }

    /// Adds `delta` under the caller's `idempotency_key` with the configured durability;
    /// see [`crate::Client::incr_idempotent`].
    pub async fn incr_idempotent(
        &self,
        key: impl AsRef<[u8]>,
        delta: i64,
        idempotency_key: u128,
    ) -> Result<i64, ClientError> {
        let op = Op::Add {
            key: key.as_ref(),
            delta,
            policy: BoundPolicy::Reject,
        };
        let durability = self.inner.config.durability;
        let outcome = self
            .execute_idempotent(&op, durability, idempotency_key)
            .await?;
        Ok(outcome.value)
    }

    /// Subtracts `delta` under the caller's `idempotency_key`; see
    /// [`AsyncClient::incr_idempotent`].
    pub async fn decr_idempotent(
        &self,
        key: impl AsRef<[u8]>,
        delta: i64,
        idempotency_key: u128,
    ) -> Result<i64, ClientError> {
        self.incr_idempotent(key, negate(delta)?, idempotency_key)
            .await
    }

    /// Starts collecting operations to send together.
    pub fn pipeline(&self) -> AsyncPipeline {
        AsyncPipeline::new(self.clone(), self.inner.config.durability)
    }

    /// Round trip to the first connection.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.control(Control::Ping).await? {
            ControlReply::Pong => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The server's statistics, as name/value pairs.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        match self.control(Control::Stats).await? {
            ControlReply::Stats(entries) => Ok(entries),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn control(&self, control: Control) -> Result<ControlReply, ClientError> {
        let routing = self.routing();
        let (reply, receiver) = oneshot::channel();
        let deadline = Instant::now() + self.inner.config.call_timeout;
        routing
            .send(0, Call::Control(control, reply, deadline))
            .await?;
        receiver.await.map_err(|_| task_gone())?
    }

    fn unexpected(&self, reply: &ControlReply) -> ClientError {
        ClientError::UnexpectedReply {
            addr: self.routing().queues[0].0,
            reason: format!("{reply:?}"),
        }
    }

    /// Runs one operation; a refused operation is [`ClientError::Rejected`].
    pub async fn execute_with<K: AsRef<[u8]>>(
        &self,
        op: &Op<K>,
        durability: Durability,
    ) -> Result<Outcome, ClientError> {
        let mut results = self
            .batch_with(std::slice::from_ref(op), durability)
            .await?;
        Ok(results.pop().expect("one result per operation")?)
    }

    /// Runs one operation with the configured durability.
    pub async fn execute<K: AsRef<[u8]>>(&self, op: &Op<K>) -> Result<Outcome, ClientError> {
        self.execute_with(op, self.inner.config.durability).await
    }

    /// Adds `delta` and returns the new value.
    pub async fn incr(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64, ClientError> {
        Ok(self
            .execute(&Op::Add {
                key: key.as_ref(),
                delta,
                policy: BoundPolicy::Reject,
            })
            .await?
            .value)
    }

    /// Subtracts `delta` and returns the new value.
    pub async fn decr(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64, ClientError> {
        let op = Op::Add {
            key: key.as_ref(),
            delta: negate(delta)?,
            policy: BoundPolicy::Reject,
        };
        Ok(self.execute(&op).await?.value)
    }

    /// The value (0 if the counter does not exist).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<i64, ClientError> {
        Ok(self.execute(&Op::Get { key: key.as_ref() }).await?.value)
    }

    /// Sets the value and returns it.
    pub async fn set(&self, key: impl AsRef<[u8]>, value: i64) -> Result<i64, ClientError> {
        Ok(self
            .execute(&Op::Set {
                key: key.as_ref(),
                value,
                policy: BoundPolicy::Reject,
            })
            .await?
            .value)
    }

    /// Deletes the counter; returns the value it had, or `None` if it did not exist.
    pub async fn del(&self, key: impl AsRef<[u8]>) -> Result<Option<i64>, ClientError> {
        let outcome = self.execute(&Op::Delete { key: key.as_ref() }).await?;
        Ok(outcome.existed.then_some(outcome.value))
    }

    /// Whether the counter exists.
    pub async fn exists(&self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        Ok(self
            .execute(&Op::Exists { key: key.as_ref() })
            .await?
            .existed)
    }

    /// Sets (or with `None` clears) the floor and ceiling.
    pub async fn set_bounds(
        &self,
        key: impl AsRef<[u8]>,
        floor: Option<i64>,
        ceiling: Option<i64>,
    ) -> Result<Outcome, ClientError> {
        self.execute(&Op::SetBounds {
            key: key.as_ref(),
            floor,
            ceiling,
        })
        .await
    }

    /// The floor and ceiling (`None` where there is none; a missing counter has none and
    /// is not created). Both are read in one frame to the key's core, so from the same
    /// state. A refused read (an empty key) is [`ClientError::Rejected`].
    pub async fn get_bounds(&self, key: impl AsRef<[u8]>) -> Result<Bounds, ClientError> {
        let results = self.batch(&Bounds::ops(key.as_ref())).await?;
        Ok(Bounds::from_results(&results)?)
    }
}

fn task_gone() -> ClientError {
    ClientError::TaskStopped
}

/// Opens a connection to a shard and checks it serves the same map as the main one.
async fn open_on_map(
    addr: SocketAddr,
    config: &ClientConfig,
    hello: &HelloReply,
) -> Result<TcpStream, ClientError> {
    let (stream, shard_hello) = open(addr, config, open_deadline(config).into()).await?;
    if routes_differ(&shard_hello, hello) || shard_hello.server_id != hello.server_id {
        let reason = "the shard map changed while connecting; retry".to_owned();
        return Err(ClientError::Handshake { addr, reason });
    }
    Ok(stream)
}

/// Starts the task serving `addr` on `runtime` (the client's, never the caller's
/// ambient one, which may be short-lived or absent); returns its call queue.
fn spawn_task(
    runtime: &Handle,
    addr: SocketAddr,
    main_addr: SocketAddr,
    config: &ClientConfig,
    stream: Option<TcpStream>,
    hello: &HelloReply,
    map_watch: &Arc<MapWatch>,
) -> mpsc::Sender<Call> {
    let (sender, receiver) = mpsc::channel(CALL_QUEUE_DEPTH);
    let task = ConnectionTask::new(
        addr,
        main_addr,
        config.clone(),
        stream,
        hello.clone(),
        map_watch.clone(),
        receiver,
    );
    runtime.spawn(task.run());
    sender
}
