//! The partition rule, `xxh3_64(key) % partition_count`, lives twice: in the engine,
//! which stores a key in its partition, and in the wire codec, which a shard-aware
//! client routes with (neither crate may depend on the other). Both compute it with a
//! mask when the count is a power of two; this checks that both give the rule for every
//! count, so a client never sends a key to a core that does not own it.

#[test]
fn engine_and_codec_give_the_hash_modulo_the_count_for_every_count() {
    for count in 1..=300u32 {
        for index in 0..64u32 {
            let key = format!("key:{index}:{count}");
            let expected = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(count);
            let engine = tally_engine::partition_of(key.as_bytes(), count);
            let codec = tally_protocol::partition_of(key.as_bytes(), count);
            assert_eq!(u64::from(engine), expected, "engine, {count} partitions");
            assert_eq!(u64::from(codec), expected, "codec, {count} partitions");
        }
    }
}
