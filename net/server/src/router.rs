//! Routing: which core owns a key, and the messages cores exchange over the channel mesh.
//!
//! Partition `p` is owned by core `p % cores`; a key's partition is
//! `xxh3_64(key) % partition_count` (the engine's and the protocol's rule). A core
//! never touches another core's store: operations on foreign keys travel as a
//! [`MeshRequest`] over glommio's channel mesh to their owner, which applies them and
//! answers with a [`MeshReply`] carrying one result per operation, in order.
//!
//! Two meshes are used, one for requests and one for replies, so the mesh cannot
//! deadlock: the task draining replies never sends, and the task draining requests only
//! sends replies, which are always drained.
//!
//! No allocation per hop in the steady state: a request carries its key arena, op list
//! and an empty result vector; the reply brings all three back (cleared or filled) so
//! the sender reuses them for its next request ([`BufferPool`]).
//!
//! Invariants: a ticket in the [`ReplyTable`] is completed at most once and freed
//! exactly once, by its waiter or, if the waiter went away, by the completion.

use std::cell::RefCell;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tally_engine::journal::Durability;
use tally_engine::{Bound, BoundPolicy, Op, OpResult};

use crate::idempotency::{Begin, Fingerprint, IdempotencyKey, IdempotentBatch};

/// The core that owns `partition` when `cores` cores share the partitions.
pub fn owner_of_partition(partition: u32, cores: usize) -> usize {
    assert!(cores > 0);
    partition as usize % cores
}

/// One operation with its key stored as a range of a [`ForwardBatch`]'s key arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardOp {
    key: Range<u32>,
    kind: ForwardKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForwardKind {
    Add {
        delta: i64,
        policy: BoundPolicy,
    },
    Set {
        value: i64,
        policy: BoundPolicy,
    },
    Get,
    Delete,
    SetBounds {
        floor: Option<i64>,
        ceiling: Option<i64>,
    },
    GetBound {
        bound: Bound,
    },
}

// Ranges travel as u32: keys of one batch are at most BATCH_OPS_MAX * 255 bytes.
const _: () =
    assert!(tally_protocol::BATCH_OPS_MAX * tally_protocol::KEY_BYTES_MAX < u32::MAX as usize);

/// Operations owned by one core, with their keys copied into one arena, and each
/// operation's index in the client's batch (idempotency records carry it).
#[derive(Debug, Default)]
pub struct ForwardBatch {
    keys: Vec<u8>,
    ops: Vec<ForwardOp>,
    indexes: Vec<u16>,
}

impl ForwardBatch {
    /// Appends an engine operation, copying its key; `index` is its place in the
    /// client's batch.
    pub fn push(&mut self, op: &Op<'_>, index: u16) {
        self.indexes.push(index);
        let key = op.key();
        let start = u32::try_from(self.keys.len()).expect("key arena below 4 GiB");
        tally_engine::extend_key(&mut self.keys, key);
        let end = u32::try_from(self.keys.len()).expect("key arena below 4 GiB");
        let kind = match *op {
            Op::Add { delta, policy, .. } => ForwardKind::Add { delta, policy },
            Op::Set { value, policy, .. } => ForwardKind::Set { value, policy },
            Op::Get { .. } => ForwardKind::Get,
            Op::Delete { .. } => ForwardKind::Delete,
            Op::SetBounds { floor, ceiling, .. } => ForwardKind::SetBounds { floor, ceiling },
            Op::GetBound { bound, .. } => ForwardKind::GetBound { bound },
        };
        self.ops.push(ForwardOp {
            key: start..end,
            kind,
        });
    }

    /// The operations, borrowing keys from the arena, appended to `out`.
    pub fn ops_into<'a>(&'a self, out: &mut Vec<Op<'a>>) {
        // `extend` from an exact-size iterator: one capacity check, not one per push.
        out.extend(self.ops.iter().map(|forward| {
            let key = &self.keys[forward.key.start as usize..forward.key.end as usize];
            match forward.kind {
                ForwardKind::Add { delta, policy } => Op::Add { key, delta, policy },
                ForwardKind::Set { value, policy } => Op::Set { key, value, policy },
                ForwardKind::Get => Op::Get { key },
                ForwardKind::Delete => Op::Delete { key },
                ForwardKind::SetBounds { floor, ceiling } => Op::SetBounds {
                    key,
                    floor,
                    ceiling,
                },
                ForwardKind::GetBound { bound } => Op::GetBound { key, bound },
            }
        }));
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Each operation's index in the client's batch, in order.
    pub fn indexes(&self) -> &[u16] {
        &self.indexes
    }

    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.ops.clear();
        self.indexes.clear();
    }
}

/// What one core asks another.
#[derive(Debug)]
pub enum MeshRequest {
    /// Apply these operations (all owned by the receiver), journal them, and answer
    /// with the results; for `Durable`, once the receiver's journal has them on disk.
    Apply {
        origin: usize,
        ticket: u32,
        batch: ForwardBatch,
        results: Vec<OpResult>,
        durability: Durability,
        idempotency: Option<IdempotentBatch>,
    },
    /// Look up an idempotency key on its home core; if new and there is room, it is
    /// recorded in flight, with room reserved for `op_count` results.
    IdempotencyBegin {
        origin: usize,
        ticket: u32,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        op_count: u16,
    },
    /// Record the reply frame of a finished idempotent batch on its home core.
    IdempotencyFinish {
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        reply: Vec<u8>,
    },
}

/// What a core answers, sent back to the request's origin.
#[derive(Debug)]
pub enum MeshReply {
    /// The results of an `Apply`, in order, with the batch's buffers to reuse.
    /// `unavailable`: the receiver's journal failed, so its mutations are answered
    /// `Unavailable` whatever their result says.
    Applied {
        ticket: u32,
        batch: ForwardBatch,
        results: Vec<OpResult>,
        unavailable: bool,
    },
    /// The answer to `IdempotencyBegin`: the home core's table's answer (it owns its
    /// data, so it travels as it is).
    Idempotency { ticket: u32, state: Begin },
}

impl MeshReply {
    /// The ticket this reply completes.
    pub fn ticket(&self) -> u32 {
        match self {
            MeshReply::Applied { ticket, .. } | MeshReply::Idempotency { ticket, .. } => *ticket,
        }
    }
}

/// Spare batches and result vectors, reused across hops to avoid allocation.
#[derive(Debug, Default)]
pub struct BufferPool {
    batches: Vec<ForwardBatch>,
    results: Vec<Vec<OpResult>>,
}

/// The most spare buffers a pool keeps; extras are freed.
const POOL_SPARES_MAX: usize = 64;

impl BufferPool {
    /// An empty batch (reused if one is spare).
    pub fn batch(&mut self) -> ForwardBatch {
        self.batches.pop().unwrap_or_default()
    }

    /// An empty result vector (reused if one is spare).
    pub fn results(&mut self) -> Vec<OpResult> {
        self.results.pop().unwrap_or_default()
    }

    /// Returns buffers for reuse.
    pub fn give_back(&mut self, mut batch: ForwardBatch, mut results: Vec<OpResult>) {
        if self.batches.len() < POOL_SPARES_MAX {
            batch.clear();
            self.batches.push(batch);
        }
        if self.results.len() < POOL_SPARES_MAX {
            results.clear();
            self.results.push(results);
        }
    }
}

enum Slot {
    Free { next_free: Option<u32> },
    Waiting { waker: Option<Waker> },
    Done(MeshReply),
    Abandoned,
}

/// Per-core table of outstanding mesh requests: a ticket per request, completed by the
/// task draining the reply mesh, awaited by the task that sent the request.
#[derive(Clone, Default)]
pub struct ReplyTable {
    inner: Rc<RefCell<TableInner>>,
}

#[derive(Default)]
struct TableInner {
    slots: Vec<Slot>,
    free_head: Option<u32>,
    outstanding: usize,
}

impl TableInner {
    fn release(&mut self, ticket: u32) {
        self.slots[ticket as usize] = Slot::Free {
            next_free: self.free_head,
        };
        self.free_head = Some(ticket);
        self.outstanding -= 1;
    }
}

impl ReplyTable {
    /// Reserves a ticket for a request about to be sent.
    pub fn reserve(&self) -> u32 {
        let mut inner = self.inner.borrow_mut();
        inner.outstanding += 1;
        if let Some(ticket) = inner.free_head {
            let Slot::Free { next_free } = inner.slots[ticket as usize] else {
                panic!("free list points at a busy slot {ticket}");
            };
            inner.free_head = next_free;
            inner.slots[ticket as usize] = Slot::Waiting { waker: None };
            return ticket;
        }
        let ticket =
            u32::try_from(inner.slots.len()).expect("fewer than 2^32 outstanding requests");
        inner.slots.push(Slot::Waiting { waker: None });
        ticket
    }

    /// Delivers a reply to its waiter (or frees the slot if the waiter went away).
    pub fn complete(&self, reply: MeshReply) {
        let ticket = reply.ticket();
        let mut inner = self.inner.borrow_mut();
        let slot = std::mem::replace(&mut inner.slots[ticket as usize], Slot::Done(reply));
        match slot {
            Slot::Waiting { waker } => {
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Slot::Abandoned => inner.release(ticket),
            Slot::Free { .. } | Slot::Done(_) => {
                panic!("reply for ticket {ticket} that is not waiting")
            }
        }
    }

    /// Frees a reserved ticket whose request could not be sent.
    pub fn cancel(&self, ticket: u32) {
        let mut inner = self.inner.borrow_mut();
        assert!(matches!(
            inner.slots[ticket as usize],
            Slot::Waiting { waker: None }
        ));
        inner.release(ticket);
    }

    /// Waits for the reply of `ticket`.
    pub fn wait(&self, ticket: u32) -> ReplyWait {
        ReplyWait {
            table: self.clone(),
            ticket,
            finished: false,
        }
    }

    /// The number of requests sent and not yet answered or abandoned.
    pub fn outstanding(&self) -> usize {
        self.inner.borrow().outstanding
    }
}

/// The future of [`ReplyTable::wait`]; dropping it early abandons the ticket.
pub struct ReplyWait {
    table: ReplyTable,
    ticket: u32,
    finished: bool,
}

impl Future for ReplyWait {
    type Output = MeshReply;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<MeshReply> {
        assert!(!self.finished, "ReplyWait polled after completion");
        let ticket = self.ticket;
        let mut inner = self.table.inner.borrow_mut();
        let index = ticket as usize;
        if let Slot::Waiting { waker } = &mut inner.slots[index] {
            *waker = Some(context.waker().clone());
            return Poll::Pending;
        }
        let Slot::Done(reply) = std::mem::replace(&mut inner.slots[index], Slot::Abandoned) else {
            panic!("ticket {ticket} neither waiting nor done");
        };
        inner.release(ticket);
        drop(inner);
        self.finished = true;
        Poll::Ready(reply)
    }
}

impl Drop for ReplyWait {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut inner = self.table.inner.borrow_mut();
        let index = self.ticket as usize;
        match inner.slots[index] {
            Slot::Done(_) => inner.release(self.ticket),
            Slot::Waiting { .. } => inner.slots[index] = Slot::Abandoned,
            Slot::Free { .. } | Slot::Abandoned => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_ops_round_trip() {
        let mut batch = ForwardBatch::default();
        let ops = [
            Op::Add {
                key: b"a",
                delta: -3,
                policy: BoundPolicy::Clamp,
            },
            Op::SetBounds {
                key: b"bb",
                floor: Some(0),
                ceiling: None,
            },
            Op::Get { key: b"ccc" },
        ];
        for (index, op) in ops.iter().enumerate() {
            batch.push(op, index as u16);
        }
        let mut out = Vec::new();
        batch.ops_into(&mut out);
        assert_eq!(out, ops);
        assert_eq!(batch.indexes(), &[0, 1, 2]);
    }

    #[test]
    fn tickets_are_reused_after_release() {
        let table = ReplyTable::default();
        let first = table.reserve();
        let second = table.reserve();
        assert_ne!(first, second);
        table.complete(MeshReply::Idempotency {
            ticket: first,
            state: Begin::New,
        });
        let reply = futures_lite::future::block_on(table.wait(first));
        assert_eq!(reply.ticket(), first);
        assert_eq!(table.reserve(), first);
        drop(table.wait(second));
        table.complete(MeshReply::Idempotency {
            ticket: second,
            state: Begin::New,
        });
        assert_eq!(table.outstanding(), 1);
    }
}
