//! The blocking client: one connection per server core, each key sent to its owner.
//!
//! [`Client::connect`] says hello on the main address, reads the shard map, then opens one
//! connection per core to that core's shard port (same IP as the main address). Every
//! call routes its keys with [`HelloReply::owner_of_key`], so no plain request takes a
//! cross-core hop inside the server, nor one with an automatic idempotency key (drawn
//! so the server keeps it on the core it is sent to). A request under the caller's key
//! may: the server keeps that key on the core its hash names, one mesh round trip away
//! unless it is the serving core, and forwards operations on other cores' keys. Connections are opened again lazily after a failure,
//! or when a call finds that the server closed one while it sat idle.
//!
//! A reconnect that brings a different shard map (the server restarted with other cores
//! or partitions) rebuilds the routes from it; the call in progress re-routes its
//! unanswered frames, resending those that are safe to resend (see `dispatch`). When a
//! shard port cannot be reached (refused: a server restarted with fewer cores no longer
//! listens on it), the client says hello on the main address instead: a new map there
//! re-routes as above; the same map means the port alone is unreachable, and the core's
//! keys go through that main connection, whose core forwards them, until it is lost and
//! the shard port is tried again.
//!
//! The main address is the authority on the shard map. A shard port's hello is used only
//! if it comes from the server process the client knows (its `server_id`); another id (a
//! restart, or another server that took a port this one freed) is checked with a hello
//! on the main address, and the shard port is used only if both come from the same
//! process. So a client never adopts the map of, or writes to, a server other than the
//! one at the address it was given.
//!
//! A `Client` is `Send` and `Sync`, but every call takes `&mut self`, so one client
//! serves one thread at a time: use one client per thread (or a `Mutex` around one), or
//! the async client, which batches concurrent calls.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use tally_protocol::{
    encode_ping, encode_stats, BoundPolicy, Durability, HelloReply, Op, Reply, BATCH_OPS_MAX,
};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::dispatch::{run_batch, run_keyed_batch};
use crate::error::ClientError;
use crate::outcome::{Bounds, OpResult, Outcome};
use crate::pipeline::Pipeline;

/// How many shard map changes [`Client::connect_with`] follows before giving up.
const MAP_CHANGES_MAX: u32 = 3;

/// A shard-aware blocking client.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    main_addr: SocketAddr,
    hello: HelloReply,
    /// Per core (or a single one when not shard-aware): where to connect, and the
    /// connection if it is open.
    shards: Vec<Shard>,
}

#[derive(Debug)]
struct Shard {
    addr: SocketAddr,
    connection: Option<Connection>,
}

/// Resolves `addr` to every socket address it names, in the resolver's order (a name
/// such as `localhost` often gives `::1` before `127.0.0.1`, and a server may listen on
/// only one of them). Never empty: no address is a [`ClientError::Resolve`].
pub(crate) fn resolve(
    addr: impl ToSocketAddrs + std::fmt::Debug,
) -> Result<Vec<SocketAddr>, ClientError> {
    let described = format!("{addr:?}");
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|error| ClientError::Resolve {
            addr: described.clone(),
            reason: error.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve {
            addr: described,
            reason: "no addresses".to_owned(),
        });
    }
    Ok(addrs)
}

/// Opens the first of `addrs` (from [`resolve`]: never empty) that answers, in order;
/// if none does, the last one's failure. Each address gets its own connect and read
/// timeouts (`open` sets them), so a name whose first addresses are black-holed (a
/// filtered `::1`) costs their connect timeouts before one answers, and N addresses
/// that all fail take up to N times the connect and read timeouts.
pub(crate) fn first_answering<T>(
    addrs: &[SocketAddr],
    mut open: impl FnMut(SocketAddr) -> Result<T, ClientError>,
) -> Result<(SocketAddr, T), ClientError> {
    let (&last, earlier) = addrs.split_last().expect("resolve gives an address");
    for &candidate in earlier {
        if let Ok(opened) = open(candidate) {
            return Ok((candidate, opened));
        }
    }
    open(last).map(|opened| (last, opened))
}

/// [`first_answering`] for an `open` that is a future (the async client).
pub(crate) async fn first_answering_async<T, F>(
    addrs: &[SocketAddr],
    mut open: impl FnMut(SocketAddr) -> F,
) -> Result<(SocketAddr, T), ClientError>
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    let (&last, earlier) = addrs.split_last().expect("resolve gives an address");
    for &candidate in earlier {
        if let Ok(opened) = open(candidate).await {
            return Ok((candidate, opened));
        }
    }
    open(last).await.map(|opened| (last, opened))
}

/// The addresses the client routes over: one per core when shard-aware (each core's shard
/// port), else the main address alone.
pub(crate) fn shard_addrs(
    main_addr: SocketAddr,
    hello: &HelloReply,
    shard_aware: bool,
) -> Vec<SocketAddr> {
    if shard_aware {
        (0..hello.core_count())
            .map(|core| shard_addr(main_addr, hello, core))
            .collect()
    } else {
        vec![main_addr]
    }
}

/// The error for a shard port that answered for another server process (`found`) than
/// the one the client knows (`known`), when the main address, which would say which is
/// right, cannot be reached: nothing is sent to the stranger.
pub(crate) fn unconfirmed_shard_port(
    addr: SocketAddr,
    found: u64,
    known: u64,
    error: &ClientError,
) -> ClientError {
    let reason = format!(
        "the shard port answered for another server (id {found:x}, not {known:x}) and \
         the main address cannot confirm it: {error}"
    );
    ClientError::Handshake { addr, reason }
}

/// Whether two shard maps route keys differently (the server id alone may differ).
pub(crate) fn routes_differ(left: &HelloReply, right: &HelloReply) -> bool {
    left.partition_count != right.partition_count
        || left.owners != right.owners
        || left.shard_ports != right.shard_ports
}

/// The deadline for opening one connection outside a call (at connect time): its
/// connect and read timeouts.
pub(crate) fn open_deadline(config: &ClientConfig) -> Instant {
    Instant::now() + config.connect_timeout + config.read_timeout
}

/// Where core `core`'s shard port is, given the main address (0: the main port itself).
pub(crate) fn shard_addr(main_addr: SocketAddr, hello: &HelloReply, core: usize) -> SocketAddr {
    match hello.shard_ports[core] {
        0 => main_addr,
        port => SocketAddr::new(main_addr.ip(), port),
    }
}

impl Client {
    /// Connects with the default configuration.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientConfig::default())
    }

    /// Connects to the main address, reads the shard map and opens the shard connections.
    pub fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        config.validate()?;
        // The first address that answers is the main address.
        let (main_addr, (main, hello)) = first_answering(&resolve(addr)?, |candidate| {
            Connection::open(candidate, &config, open_deadline(&config))
        })?;
        let mut client = Client {
            config,
            main_addr,
            hello: hello.clone(),
            shards: Vec::new(),
        };
        // The main connection serves the shards on the main port; others open now (a
        // shard port that cannot be reached falls back to the main port, see the module
        // docs).
        client.adopt_shard_map(hello, main);
        let mut map_changes = 0;
        let mut core = 0;
        while core < client.shards.len() {
            let deadline = open_deadline(&client.config);
            match client.connection(core, deadline) {
                Ok(_) => core += 1,
                // The server restarted with another map between two connects: start over
                // under the new one, a bounded number of times.
                Err(ClientError::ShardMapChanged { .. }) if map_changes < MAP_CHANGES_MAX => {
                    map_changes += 1;
                    core = 0;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(client)
    }

    /// The shard map in use: the one the server sent at connect time, or the newer one
    /// a reconnect found.
    pub fn shard_map(&self) -> &HelloReply {
        &self.hello
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sets the durability of calls that do not name one.
    pub fn set_durability(&mut self, durability: Durability) {
        self.config.durability = durability;
    }

    /// How many connections the client routes over (the core count when shard-aware).
    pub fn connection_count(&self) -> usize {
        self.shards.len()
    }

    /// The index of the connection that serves `key`.
    pub fn route(&self, key: &[u8]) -> usize {
        if self.config.shard_aware {
            self.hello.owner_of_key(key)
        } else {
            0
        }
    }

    /// The open connection to `core`, opening it if needed (or if the server closed it
    /// while it sat idle) by `deadline`. A new connection whose shard map differs from
    /// the client's makes the client adopt the new map (see [`Client::adopt_shard_map`])
    /// and fail with [`ClientError::ShardMapChanged`], so the caller routes again.
    pub(crate) fn connection(
        &mut self,
        core: usize,
        deadline: Instant,
    ) -> Result<&mut Connection, ClientError> {
        if let Some(connection) = &mut self.shards[core].connection {
            if connection.closed_while_idle() {
                self.shards[core].connection = None;
            }
        }
        if self.shards[core].connection.is_none() {
            let (connection, hello) = self.open_shard(core, deadline)?;
            if routes_differ(&hello, &self.hello) {
                let addr = connection.addr();
                self.adopt_shard_map(hello, connection);
                return Err(ClientError::ShardMapChanged { addr });
            }
            self.hello.server_id = hello.server_id;
            self.shards[core].connection = Some(connection);
        }
        Ok(self.shards[core].connection.as_mut().expect("opened above"))
    }

    /// Opens a connection for `core`: to its shard port, or, if that fails (refused, or
    /// anything but a Tally hello), to the main address, whose hello tells whether the
    /// shard map changed and whose core otherwise forwards the keys. If both fail, the
    /// shard port's error is returned. A shard port's hello is trusted only from the
    /// server process the client knows (the same `server_id`, see
    /// [`Client::confirm_shard`]), never adopted on its own word.
    fn open_shard(
        &self,
        core: usize,
        deadline: Instant,
    ) -> Result<(Connection, HelloReply), ClientError> {
        let addr = self.shards[core].addr;
        if addr == self.main_addr {
            return Connection::open(addr, &self.config, deadline);
        }
        match Connection::open(addr, &self.config, deadline) {
            Ok((connection, hello)) if hello.server_id == self.hello.server_id => {
                Ok((connection, hello))
            }
            Ok((connection, hello)) => self.confirm_shard(addr, connection, hello, deadline),
            Err(error) => {
                Connection::open(self.main_addr, &self.config, deadline).map_err(|_| error)
            }
        }
    }

    /// A shard port answered with another `server_id` than the client knows: the server
    /// restarted, or another server took the port (a restart with fewer cores frees
    /// ports). Only the main address says which: its hello is taken as the truth. If it
    /// comes from the same process as the shard port's, the shard connection is opened
    /// again (the first was closed, so the client never holds more connections than
    /// routes) and used; otherwise the main connection serves the core, and a map that
    /// differs from the client's is adopted from it by the caller. If the main address
    /// cannot be reached, nothing is sent to the stranger.
    fn confirm_shard(
        &self,
        addr: SocketAddr,
        connection: Connection,
        shard_hello: HelloReply,
        deadline: Instant,
    ) -> Result<(Connection, HelloReply), ClientError> {
        drop(connection);
        let (main, main_hello) = match Connection::open(self.main_addr, &self.config, deadline) {
            Ok(opened) => opened,
            Err(error) => {
                return Err(unconfirmed_shard_port(
                    addr,
                    shard_hello.server_id,
                    self.hello.server_id,
                    &error,
                ))
            }
        };
        let same_server = main_hello.server_id == shard_hello.server_id
            && !routes_differ(&main_hello, &shard_hello);
        if !same_server {
            return Ok((main, main_hello));
        }
        drop(main);
        let (connection, hello) = Connection::open(addr, &self.config, deadline)?;
        if hello.server_id != main_hello.server_id {
            let reason = "the server behind the shard port changed while connecting; retry";
            let reason = reason.to_owned();
            return Err(ClientError::Handshake { addr, reason });
        }
        Ok((connection, hello))
    }

    /// Takes `hello` as the shard map and rebuilds the routes from it. Every other
    /// connection is dropped: they were opened under the old map, which changes when
    /// the server restarts with other cores or partitions, so they are gone anyway.
    /// `connection`, which brought the new map, serves the shard at its address, if any.
    fn adopt_shard_map(&mut self, hello: HelloReply, connection: Connection) {
        let addrs = shard_addrs(self.main_addr, &hello, self.config.shard_aware);
        let mut connection = Some(connection);
        self.shards = addrs
            .into_iter()
            .map(|addr| Shard {
                addr,
                connection: connection.take_if(|connection| connection.addr() == addr),
            })
            .collect();
        self.hello = hello;
        debug_assert!(!self.shards.is_empty());
    }

    /// Forgets the connection to `core`; the next call opens a new one.
    /// (An index past the shard count, left from an older map, has nothing to drop.)
    pub(crate) fn drop_connection(&mut self, core: usize) {
        if let Some(shard) = self.shards.get_mut(core) {
            shard.connection = None;
        }
    }

    /// Runs one operation with the configured durability.
    pub fn execute<K: AsRef<[u8]>>(&mut self, op: &Op<K>) -> Result<Outcome, ClientError> {
        self.execute_with(op, self.config.durability)
    }

    /// Runs one operation; a refused operation is [`ClientError::Rejected`].
    pub fn execute_with<K: AsRef<[u8]>>(
        &mut self,
        op: &Op<K>,
        durability: Durability,
    ) -> Result<Outcome, ClientError> {
        let mut results = run_batch(self, std::slice::from_ref(op), durability, 1)?;
        let result = results.pop().expect("one result per operation");
        Ok(result?)
    }

    /// Runs many operations with the configured durability; see [`Client::batch_with`].
    pub fn batch<K: AsRef<[u8]>>(&mut self, ops: &[Op<K>]) -> Result<Vec<OpResult>, ClientError> {
        self.batch_with(ops, self.config.durability)
    }

    /// Runs many operations, split per owning core and in frames of at most
    /// `BATCH_OPS_MAX`, all sent before any reply is awaited. Returns one result per
    /// operation, in order. Operations on different cores are not atomic together.
    pub fn batch_with<K: AsRef<[u8]>>(
        &mut self,
        ops: &[Op<K>],
        durability: Durability,
    ) -> Result<Vec<OpResult>, ClientError> {
        run_batch(self, ops, durability, BATCH_OPS_MAX)
    }

    /// Like [`Client::batch_with`], with at most `ops_per_frame` operations per frame:
    /// 1 pipelines single-operation requests.
    pub fn batch_framed<K: AsRef<[u8]>>(
        &mut self,
        ops: &[Op<K>],
        durability: Durability,
        ops_per_frame: usize,
    ) -> Result<Vec<OpResult>, ClientError> {
        run_batch(self, ops, durability, ops_per_frame)
    }

    /// Runs `ops` as one request under the caller's `idempotency_key` (at most
    /// `BATCH_OPS_MAX` operations, else [`ClientError::Encode`]); one result per
    /// operation, in order. Make the key with [`crate::random_idempotency_key`], keep it
    /// with the operations until the call succeeds, and after
    /// [`ClientError::OutcomeUnknown`] or [`ClientError::NotApplied`] call again with the
    /// same operations, in the same order, and the same key: the server applies what the
    /// first attempts did not and returns their results for the rest, within its
    /// idempotency window (10 minutes by default, PROTOCOL.md "Idempotency"). Another
    /// batch under a key already used is refused (`IdempotencyKeyReused`). The key is sent
    /// even with `retries` 0. Operations of several cores are applied by each core in
    /// turn, not atomically together, but once each under the key.
    pub fn batch_idempotent<K: AsRef<[u8]>>(
        &mut self,
        ops: &[Op<K>],
        durability: Durability,
        idempotency_key: u128,
    ) -> Result<Vec<OpResult>, ClientError> {
        run_keyed_batch(self, ops, durability, idempotency_key)
    }

    /// Runs one operation under the caller's `idempotency_key`; see
    /// [`Client::batch_idempotent`]. A refused operation is [`ClientError::Rejected`].
    pub fn execute_idempotent<K: AsRef<[u8]>>(
        &mut self,
        op: &Op<K>,
        durability: Durability,
        idempotency_key: u128,
    ) -> Result<Outcome, ClientError> {
        let ops = std::slice::from_ref(op);
        let mut results = run_keyed_batch(self, ops, durability, idempotency_key)?;
        let result = results.pop().expect("one result per operation");
        Ok(result?)
    }

    /// Adds `delta` under the caller's `idempotency_key` with the configured durability,
    /// and returns the new value (on a repeat with the same key: the value the first
    /// application returned). See [`Client::batch_idempotent`] and the crate docs.
    pub fn incr_idempotent(
        &mut self,
        key: impl AsRef<[u8]>,
        delta: i64,
        idempotency_key: u128,
    ) -> Result<i64, ClientError> {
        let op = Op::Add {
            key: key.as_ref(),
            delta,
            policy: BoundPolicy::Reject,
        };
        let durability = self.config.durability;
        Ok(self
            .execute_idempotent(&op, durability, idempotency_key)?
            .value)
    }

    /// Subtracts `delta` under the caller's `idempotency_key`; see
    /// [`Client::incr_idempotent`].
    pub fn decr_idempotent(
        &mut self,
        key: impl AsRef<[u8]>,
        delta: i64,
        idempotency_key: u128,
    ) -> Result<i64, ClientError> {
        self.incr_idempotent(key, negate(delta)?, idempotency_key)
    }

    /// Starts collecting operations to send together.
    pub fn pipeline(&mut self) -> Pipeline<'_> {
        Pipeline::new(self)
    }

    /// Adds `delta` and returns the new value.
    pub fn incr(&mut self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64, ClientError> {
        let op = Op::Add {
            key: key.as_ref(),
            delta,
            policy: BoundPolicy::Reject,
        };
        Ok(self.execute(&op)?.value)
    }

    /// Subtracts `delta` and returns the new value.
    pub fn decr(&mut self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64, ClientError> {
        let op = Op::Add {
            key: key.as_ref(),
            delta: negate(delta)?,
            policy: BoundPolicy::Reject,
        };
        Ok(self.execute(&op)?.value)
    }

    /// The value (0 if the counter does not exist).
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<i64, ClientError> {
        Ok(self.execute(&Op::Get { key: key.as_ref() })?.value)
    }

    /// Sets the value and returns it.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: i64) -> Result<i64, ClientError> {
        let op = Op::Set {
            key: key.as_ref(),
            value,
            policy: BoundPolicy::Reject,
        };
        Ok(self.execute(&op)?.value)
    }

    /// Deletes the counter; returns the value it had, or `None` if it did not exist.
    pub fn del(&mut self, key: impl AsRef<[u8]>) -> Result<Option<i64>, ClientError> {
        let outcome = self.execute(&Op::Delete { key: key.as_ref() })?;
        Ok(outcome.existed.then_some(outcome.value))
    }

    /// Whether the counter exists.
    pub fn exists(&mut self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        Ok(self.execute(&Op::Exists { key: key.as_ref() })?.existed)
    }

    /// Sets (or with `None` clears) the floor and ceiling.
    pub fn set_bounds(
        &mut self,
        key: impl AsRef<[u8]>,
        floor: Option<i64>,
        ceiling: Option<i64>,
    ) -> Result<Outcome, ClientError> {
        self.execute(&Op::SetBounds {
            key: key.as_ref(),
            floor,
            ceiling,
        })
    }

    /// The floor and ceiling (`None` where there is none; a missing counter has none and
    /// is not created). Both are read in one frame to the key's core, so from the same
    /// state. A refused read (an empty key) is [`ClientError::Rejected`].
    pub fn get_bounds(&mut self, key: impl AsRef<[u8]>) -> Result<Bounds, ClientError> {
        let results = self.batch(&Bounds::ops(key.as_ref()))?;
        Ok(Bounds::from_results(&results)?)
    }

    /// Round trip to the first connection.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.control(0, encode_ping, |reply| match reply {
            Reply::Pong => Ok(()),
            other => Err(other),
        })
    }

    /// The server's statistics, as name/value pairs, from the core that serves the first
    /// connection (the `core` entry says which).
    pub fn stats(&mut self) -> Result<Vec<(String, u64)>, ClientError> {
        self.core_stats(0)
    }

    /// The statistics of the core behind connection `core` (`0..connection_count()`):
    /// with a shard-aware client, that core's own, asked on its shard port. Another index
    /// is [`ClientError::NoSuchConnection`] (the count shrinks when a reconnect finds a
    /// shard map with fewer cores).
    pub fn core_stats(&mut self, core: usize) -> Result<Vec<(String, u64)>, ClientError> {
        if core >= self.shards.len() {
            return Err(ClientError::NoSuchConnection {
                index: core,
                count: self.shards.len(),
            });
        }
        self.control(core, encode_stats, |reply| match reply {
            Reply::StatsReply(stats) => Ok(stats.entries),
            other => Err(other),
        })
    }

    fn control<T>(
        &mut self,
        core: usize,
        encode: fn(&mut Vec<u8>, u64),
        accept: impl FnOnce(Reply<'_>) -> Result<T, Reply<'_>>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + self.config.call_timeout;
        let connection = self.connection(core, deadline)?;
        let request_id = connection.next_request_id();
        encode(&mut connection.write_buf, request_id);
        let result = connection
            .flush()
            .and_then(|()| connection.read_reply(request_id, deadline, accept));
        if result.as_ref().is_err_and(ClientError::breaks_connection) {
            self.drop_connection(core);
        }
        result
    }
}

/// `-delta`, or an overflow rejection for `i64::MIN`.
pub(crate) fn negate(delta: i64) -> Result<i64, ClientError> {
    delta
        .checked_neg()
        .ok_or(ClientError::Rejected(crate::outcome::Rejection {
            status: tally_protocol::Status::Overflow,
            detail: 0,
        }))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::first_answering;
    use crate::ClientError;

    fn refused(addr: SocketAddr) -> ClientError {
        let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        ClientError::Connect { addr, source }
    }

    #[test]
    fn the_first_address_that_answers_is_used_and_the_rest_are_not_tried() {
        let addrs: Vec<SocketAddr> = ["[::1]:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|addr| addr.parse().unwrap())
            .collect();
        let mut tried = Vec::new();
        let (addr, port) = first_answering(&addrs, |candidate| {
            tried.push(candidate);
            match candidate.port() {
                1 => Err(refused(candidate)),
                port => Ok(port),
            }
        })
        .unwrap();
        assert_eq!((addr, port), (addrs[1], 2));
        assert_eq!(tried, addrs[..2]);
    }

    #[test]
    fn when_no_address_answers_the_last_failure_is_reported() {
        let addrs: Vec<SocketAddr> = ["[::1]:1", "127.0.0.1:2"]
            .iter()
            .map(|addr| addr.parse().unwrap())
            .collect();
        let error = first_answering(&addrs, |candidate| Err::<(), _>(refused(candidate)));
        match error {
            Err(ClientError::Connect { addr, .. }) => assert_eq!(addr, addrs[1]),
            other => panic!("{other:?}"),
        }
    }
}
