//! Property tests of every operation and of batches against a plain `HashMap` model,
//! including bounds (reject and clamp, and reading each bound back), overflow at both ends, long keys in the key heap,
//! delete then re-insert, growth, and a clean close followed by a reopen.

use std::collections::HashMap;

use proptest::prelude::*;
use tally_engine::{Bound, BoundPolicy, DataDir, Op, OpError, OpResult, Outcome, Store};

/// value, floor, ceiling
type Model = HashMap<Vec<u8>, (i64, Option<i64>, Option<i64>)>;

/// A deterministic key for an id: a third of them longer than 16 bytes (key heap).
fn key_for(id: u16) -> Vec<u8> {
    let digits = id.to_string().into_bytes();
    let length = if id.is_multiple_of(3) {
        17 + usize::from(id) * 37 % 239
    } else {
        1 + usize::from(id) % 16
    };
    let mut key = digits.clone();
    while key.len() < length {
        key.push(b'.');
    }
    key
}

#[derive(Clone, Debug)]
enum ModelOp {
    Add(u16, i64, BoundPolicy),
    Set(u16, i64, BoundPolicy),
    Get(u16),
    Delete(u16),
    SetBounds(u16, Option<i64>, Option<i64>),
    /// Read the floor (`false`) or the ceiling (`true`).
    GetBound(u16, bool),
}

fn policy() -> impl Strategy<Value = BoundPolicy> {
    prop_oneof![Just(BoundPolicy::Reject), Just(BoundPolicy::Clamp)]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -12i64..12,
        1 => any::<i64>(),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX - 3),
        1 => Just(i64::MIN + 3),
    ]
}

fn model_op(key_ids: u16) -> impl Strategy<Value = ModelOp> {
    let bound = prop::option::of(-15i64..15);
    prop_oneof![
        6 => (0..key_ids, amount(), policy()).prop_map(|(k, d, p)| ModelOp::Add(k, d, p)),
        2 => (0..key_ids, amount(), policy()).prop_map(|(k, v, p)| ModelOp::Set(k, v, p)),
        2 => (0..key_ids).prop_map(ModelOp::Get),
        2 => (0..key_ids).prop_map(ModelOp::Delete),
        2 => (0..key_ids, bound.clone(), bound).prop_map(|(k, f, c)| ModelOp::SetBounds(k, f, c)),
        2 => (0..key_ids, any::<bool>()).prop_map(|(k, c)| ModelOp::GetBound(k, c)),
    ]
}

/// An increment, a set or (rarely) a delete of one of 150 keys, a third of them longer
/// than 16 bytes (see `key_for`): about as many counters as a first table holds.
fn crowded_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        12 => (0u16..150, -3i64..4).prop_map(|(k, d)| ModelOp::Add(k, d, BoundPolicy::Reject)),
        2 => (0u16..150, -3i64..4).prop_map(|(k, v)| ModelOp::Set(k, v, BoundPolicy::Reject)),
        1 => (0u16..150).prop_map(ModelOp::Delete),
    ]
}

fn to_op<'a>(op: &ModelOp, keys: &'a [Vec<u8>]) -> Op<'a> {
    match *op {
        ModelOp::Add(k, delta, policy) => Op::Add {
            key: &keys[k as usize],
            delta,
            policy,
        },
        ModelOp::Set(k, value, policy) => Op::Set {
            key: &keys[k as usize],
            value,
            policy,
        },
        ModelOp::Get(k) => Op::Get {
            key: &keys[k as usize],
        },
        ModelOp::Delete(k) => Op::Delete {
            key: &keys[k as usize],
        },
        ModelOp::SetBounds(k, floor, ceiling) => Op::SetBounds {
            key: &keys[k as usize],
            floor,
            ceiling,
        },
        ModelOp::GetBound(k, ceiling) => Op::GetBound {
            key: &keys[k as usize],
            bound: if ceiling {
                Bound::Ceiling
            } else {
                Bound::Floor
            },
        },
    }
}

fn outcome(value: i64, existed: bool, clamped: bool) -> OpResult {
    Ok(Outcome {
        value,
        existed,
        clamped,
    })
}

/// Checks `value` (a true sum, maybe past i64's range) against bounds the way the
/// engine must: a bound it crosses rejects or clamps it; past i64 without a bound in
/// the way, it overflows.
fn bounded(
    value: i128,
    floor: Option<i64>,
    ceiling: Option<i64>,
    policy: BoundPolicy,
) -> Result<(i64, bool), OpError> {
    let below = floor.filter(|&f| value < i128::from(f));
    let above = ceiling.filter(|&c| value > i128::from(c));
    match (below, above, policy) {
        (Some(f), _, BoundPolicy::Reject) => Err(OpError::BelowFloor { floor: f }),
        (Some(f), _, BoundPolicy::Clamp) => Ok((f, true)),
        (_, Some(c), BoundPolicy::Reject) => Err(OpError::AboveCeiling { ceiling: c }),
        (_, Some(c), BoundPolicy::Clamp) => Ok((c, true)),
        (None, None, _) => i64::try_from(value)
            .map(|value| (value, false))
            .map_err(|_| OpError::Overflow),
    }
}

/// The model's semantics of one operation.
fn model_apply(model: &mut Model, op: &Op) -> OpResult {
    let key = op.key().to_vec();
    let current = model.get(&key).copied();
    match *op {
        Op::Add { delta, policy, .. } => match current {
            None => {
                model.insert(key, (delta, None, None));
                outcome(delta, false, false)
            }
            Some((value, floor, ceiling)) => {
                let sum = i128::from(value) + i128::from(delta);
                let (value, clamped) = bounded(sum, floor, ceiling, policy)?;
                model.insert(key, (value, floor, ceiling));
                outcome(value, true, clamped)
            }
        },
        Op::Set { value, policy, .. } => {
            let (floor, ceiling) = current.map_or((None, None), |(_, f, c)| (f, c));
            let (value, clamped) = bounded(value.into(), floor, ceiling, policy)?;
            model.insert(key, (value, floor, ceiling));
            outcome(value, current.is_some(), clamped)
        }
        Op::Get { .. } => outcome(current.map_or(0, |c| c.0), current.is_some(), false),
        Op::Delete { .. } => {
            model.remove(&key);
            outcome(current.map_or(0, |c| c.0), current.is_some(), false)
        }
        Op::SetBounds { floor, ceiling, .. } => {
            if let (Some(f), Some(c)) = (floor, ceiling) {
                if f > c {
                    return Err(OpError::InvalidBounds {
                        floor: f,
                        ceiling: c,
                    });
                }
            }
            let value = current.map_or(0, |c| c.0);
            if floor.is_some_and(|f| value < f) || ceiling.is_some_and(|c| value > c) {
                return Err(OpError::OutOfBounds { value });
            }
            model.insert(key, (value, floor, ceiling));
            outcome(value, current.is_some(), false)
        }
        Op::GetBound { bound, .. } => {
            let read = current.and_then(|(_, floor, ceiling)| match bound {
                Bound::Floor => floor,
                Bound::Ceiling => ceiling,
            });
            outcome(read.unwrap_or(0), read.is_some(), false)
        }
    }
}

fn all_partitions(dir: &DataDir) -> std::ops::Range<u32> {
    0..dir.partition_count()
}

/// Checks the store's whole contents against the model, both by lookup and by scan.
fn assert_matches(store: &Store, model: &Model) {
    let mut scanned = Model::new();
    for partition in 0..store.partition_count() {
        store.for_each_counter(partition, |key, value, floor, ceiling| {
            let previous = scanned.insert(key.to_vec(), (value, floor, ceiling));
            assert!(previous.is_none(), "counter visited twice");
        });
    }
    assert_eq!(&scanned, model);
    assert_eq!(store.counter_count(), model.len() as u64);
    for (key, &(value, floor, ceiling)) in model {
        assert_eq!(store.get(key).unwrap(), Some(value));
        assert_eq!(store.bounds(key).unwrap(), (floor, ceiling));
    }
}

fn run_case(ops: &[ModelOp], batch_sizes: &[usize], partition_count: u32) {
    let keys: Vec<Vec<u8>> = (0..512).map(key_for).collect();
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(partition_count)).unwrap();
    let mut store = Store::open(&dir, all_partitions(&dir)).unwrap();
    let mut model = Model::new();
    let mut results = Vec::new();
    let mut remaining = ops;
    let mut batch_index = 0;
    while !remaining.is_empty() {
        let size = batch_sizes[batch_index % batch_sizes.len()].min(remaining.len());
        batch_index += 1;
        let (batch, rest) = remaining.split_at(size);
        remaining = rest;
        let batch: Vec<Op> = batch.iter().map(|op| to_op(op, &keys)).collect();
        let expected: Vec<OpResult> = batch.iter().map(|op| model_apply(&mut model, op)).collect();
        if size == 1 {
            results = vec![store.apply(&batch[0])];
        } else {
            store.apply_batch(&batch, &mut results).unwrap();
        }
        assert_eq!(results, expected, "batch {batch:?}");
    }
    assert_matches(&store, &model);
    store.close_clean().unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let store = Store::open(&dir, all_partitions(&dir)).unwrap();
    assert!(store.was_clean_shutdown());
    assert_matches(&store, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn operations_match_the_model(
        ops in prop::collection::vec(model_op(40), 1..400),
        batch_sizes in prop::collection::vec(1usize..64, 1..6),
        partition_count in 1u32..5,
    ) {
        run_case(&ops, &batch_sizes, partition_count);
    }

    /// Few keys, so the same key often comes several times in a row inside a batch (a
    /// hot key, which the batch pipeline serves from the slot the previous operation
    /// updated) with deletes, sets, bounds and overflow in between.
    #[test]
    fn runs_of_one_key_match_the_model(
        ops in prop::collection::vec(model_op(3), 1..400),
        batch_sizes in prop::collection::vec(1usize..64, 1..6),
    ) {
        run_case(&ops, &batch_sizes, 2);
    }

    /// Increments and sets, with deletes that keep inserts coming: tables near their
    /// load limit, so many counters sit in their alternate bucket and the batch pipeline
    /// lets their operations wait (and those of long keys, for their heap record), while
    /// inserts move counters along cuckoo paths.
    #[test]
    fn crowded_increments_match_the_model(
        ops in prop::collection::vec(crowded_op(), 300..1500),
        batch_sizes in prop::collection::vec(32usize..400, 1..4),
    ) {
        run_case(&ops, &batch_sizes, 1);
    }

    #[test]
    fn growth_with_deletes_matches_the_model(
        ops in prop::collection::vec(model_op(512), 1500..3000),
        batch_sizes in prop::collection::vec(1usize..300, 1..4),
    ) {
        run_case(&ops, &batch_sizes, 1);
    }
}

/// Hundreds of thousands of counters over 64 partitions: thousands of growth steps in
/// all, each with an incremental migration, with deletes and re-inserts interleaved.
#[test]
fn thousands_of_growth_steps_lose_and_duplicate_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(64)).unwrap();
    let mut store = Store::open(&dir, 0..64).unwrap();
    let mut model = Model::new();
    let key = |index: u64| format!("counter-{index}").into_bytes();
    let initial_bytes = store.arena_bytes();
    for index in 0..150_000u64 {
        let k = key(index);
        let op = Op::Add {
            key: &k,
            delta: index as i64,
            policy: BoundPolicy::Reject,
        };
        assert_eq!(store.apply(&op), model_apply(&mut model, &op));
        if index % 3 == 0 {
            let victim = key(index / 2);
            let op = Op::Delete { key: &victim };
            assert_eq!(store.apply(&op), model_apply(&mut model, &op));
        }
    }
    for index in 0..20_000u64 {
        let k = key(index);
        let op = Op::Add {
            key: &k,
            delta: 1,
            policy: BoundPolicy::Reject,
        };
        assert_eq!(store.apply(&op), model_apply(&mut model, &op));
    }
    assert!(store.arena_bytes() > initial_bytes * 4, "the tables grew");
    assert_matches(&store, &model);
}

#[test]
fn delete_then_reinsert_starts_from_zero_without_old_bounds() {
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(2)).unwrap();
    let mut store = Store::open(&dir, 0..2).unwrap();
    let key = b"likes:post:1";
    let bounds = Op::SetBounds {
        key,
        floor: Some(0),
        ceiling: None,
    };
    store.apply(&bounds).unwrap();
    let down = Op::Add {
        key,
        delta: -1,
        policy: BoundPolicy::Reject,
    };
    assert_eq!(store.apply(&down), Err(OpError::BelowFloor { floor: 0 }));
    store.apply(&Op::Delete { key }).unwrap();
    assert_eq!(store.get(key).unwrap(), None);
    assert_eq!(store.apply(&down).unwrap().value, -1);
    assert_eq!(store.bounds(key).unwrap(), (None, None));
}

/// One partition grown to tables of several MiB, the sizes whose successors the arena
/// helper thread prepares ahead (mapped and faulted in): nothing lost or duplicated, with
/// deletes interleaved and a clean close and reopen at the end.
#[test]
fn tables_grown_through_prepared_successors_match_the_model() {
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(1)).unwrap();
    let mut store = Store::open(&dir, 0..1).unwrap();
    let mut model = Model::new();
    let key = |index: u64| format!("k{index:015}").into_bytes();
    for index in 0..260_000u64 {
        let k = key(index);
        let op = Op::Add {
            key: &k,
            delta: 1 + index as i64 % 7,
            policy: BoundPolicy::Reject,
        };
        assert_eq!(store.apply(&op), model_apply(&mut model, &op));
        if index % 5 == 0 {
            let victim = key(index * 7 / 10);
            let op = Op::Delete { key: &victim };
            assert_eq!(store.apply(&op), model_apply(&mut model, &op));
        }
    }
    assert!(store.arena_bytes() > 8 << 20, "the table grew past 8 MiB");
    assert_matches(&store, &model);
    store.close_clean().unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let store = Store::open(&dir, 0..1).unwrap();
    assert_matches(&store, &model);
}
