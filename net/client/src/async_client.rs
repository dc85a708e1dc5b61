//! The async client for tokio: the same operations as [`crate::Client`], callable from
//! many tasks at once through a cheap clonable handle.
//!
//! Each server core has one connection driven by its own task
//! ([`crate::async_connection`]); a call splits its operations by owning core, queues them
//! on those tasks, and awaits the results. Calls that queue up while a task is busy are
//! packed together into one batch frame, so many concurrent `incr`s cost the server a few
//! frames rather than one each, with no batching code in the caller.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use tally_protocol::{BoundPolicy, Durability, HelloReply, Op, BATCH_OPS_MAX};
use tokio::sync::{mpsc, oneshot};

use crate::async_connection::{open, Call, ConnectionTask, CALL_QUEUE_DEPTH};
use crate::blocking::{negate, resolve, shard_addr};
use crate::config::ClientConfig;
use crate::dispatch::check_keys;
use crate::error::ClientError;
use crate::outcome::{OpResult, Outcome};

/// A shard-aware async client; clone it freely, all clones share the connections.
#[derive(Clone, Debug)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    hello: HelloReply,
    queues: Vec<mpsc::Sender<Call>>,
}

impl AsyncClient {
    /// Connects with the default configuration. Must be called within a tokio runtime.
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
        let main_addr = resolve(addr)?;
        let (main_stream, hello) = open(main_addr, &config).await?;
        let addrs: Vec<SocketAddr> = if config.shard_aware {
            (0..hello.core_count())
                .map(|core| shard_addr(main_addr, &hello, core))
                .collect()
        } else {
            vec![main_addr]
        };
        let mut main_stream = Some(main_stream);
        let mut queues = Vec::new();
        for addr in addrs {
            let stream = match main_stream.take_if(|_| addr == main_addr) {
                Some(stream) => stream,
                None => open(addr, &config).await?.0,
            };
            let (sender, receiver) = mpsc::channel(CALL_QUEUE_DEPTH);
            tokio::spawn(ConnectionTask::new(addr, config.clone(), stream, receiver).run());
            queues.push(sender);
        }
        Ok(AsyncClient {
            inner: Arc::new(Inner {
                config,
                hello,
                queues,
            }),
        })
    }

    /// The shard map the server sent at connect time.
    pub fn shard_map(&self) -> &HelloReply {
        &self.inner.hello
    }

    fn route(&self, key: &[u8]) -> usize {
        if self.inner.config.shard_aware {
            self.inner.hello.owner_of_key(key)
        } else {
            0
        }
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
        let mut by_core: Vec<Vec<usize>> = vec![Vec::new(); self.inner.queues.len()];
        for (index, op) in ops.iter().enumerate() {
            by_core[self.route(op.key())].push(index);
        }
        let mut waiting = Vec::new();
        for (core, indices) in by_core.iter().enumerate() {
            for chunk in indices.chunks(BATCH_OPS_MAX) {
                let (reply, receiver) = oneshot::channel();
                let call = Call {
                    ops: chunk
                        .iter()
                        .map(|&index| ops[index].to_owned_op())
                        .collect(),
                    durability,
                    reply,
                };
                self.inner.queues[core]
                    .send(call)
                    .await
                    .map_err(|_| task_gone())?;
                waiting.push((chunk, receiver));
            }
        }
        let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
        for (chunk, receiver) in waiting {
            let chunk_results = receiver.await.map_err(|_| task_gone())??;
            for (&index, result) in chunk.iter().zip(chunk_results) {
                results[index] = Some(result);
            }
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every chunk was answered"))
            .collect())
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
}

fn task_gone() -> ClientError {
    ClientError::TaskStopped
}
