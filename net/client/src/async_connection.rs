//! One tokio task per server core: coalesces queued calls into batch frames, pipelines
//! them, matches replies in order, and resends unanswered frames after a lost connection.
//!
//! The task owns the socket. It waits on three things at once: a new call (only while the
//! in-flight window has room), bytes from the server, and the read deadline of the oldest
//! unanswered frame. When calls arrive it drains the queue, packing calls of the same
//! durability into frames of at most `BATCH_OPS_MAX` operations (a call never spans two
//! frames), and writes them all with one `write_all`. Replies come back in request order,
//! so the oldest in-flight frame is the one a reply answers.
//!
//! A frame that can change state carries a random idempotency key when retries are on,
//! so after a lost connection or a timeout the task reconnects and resends the same bytes
//! and the server applies them at most once. Frames without that safety, and all frames
//! once retries run out, fail their calls with the error.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use tally_protocol::{
    decode_reply, encode_hello, BatchWriter, Durability, HelloReply, Op, Reply, BATCH_OPS_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::config::ClientConfig;
use crate::dispatch::IN_FLIGHT_OPS_MAX;
use crate::error::ClientError;
use crate::idempotency::random_idempotency_key;
use crate::outcome::{from_reply, OpResult};

/// Calls queued per connection before callers wait for room.
pub(crate) const CALL_QUEUE_DEPTH: usize = 4096;

/// Where a call's results go.
pub(crate) type ReplySender = oneshot::Sender<Result<Vec<OpResult>, ClientError>>;

/// Operations for one core, from one caller.
pub(crate) struct Call {
    pub(crate) ops: Vec<Op>,
    pub(crate) durability: Durability,
    pub(crate) reply: ReplySender,
}

/// A frame on the wire, waiting for its reply.
struct InFlight {
    request_id: u64,
    bytes: Vec<u8>,
    retry_safe: bool,
    calls: Vec<(usize, ReplySender)>,
    op_count: usize,
}

/// Connects, says hello, and returns the stream and shard map.
pub(crate) async fn open(
    addr: SocketAddr,
    config: &ClientConfig,
) -> Result<(TcpStream, HelloReply), ClientError> {
    let stream = match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Ok(connected) => connected.map_err(|source| ClientError::Connect { addr, source })?,
        Err(_) => {
            return Err(ClientError::Timeout {
                action: "connecting to",
                addr,
            })
        }
    };
    stream.set_nodelay(true).map_err(|source| ClientError::Io {
        action: "configuring",
        addr,
        source,
    })?;
    let mut stream = stream;
    let mut out = Vec::new();
    encode_hello(&mut out, 0, &config.client_name).map_err(ClientError::Encode)?;
    write(&mut stream, addr, &out).await?;
    let mut buf = Vec::with_capacity(4096);
    let deadline = Instant::now() + config.read_timeout;
    loop {
        if let Some(frame) =
            decode_reply(&buf).map_err(|source| ClientError::Protocol { addr, source })?
        {
            return match frame.reply {
                Ok(Reply::HelloReply(hello)) => Ok((stream, hello)),
                Ok(Reply::Error(error)) => Err(ClientError::Server {
                    code: error.code,
                    message: error.message.to_owned(),
                }),
                Ok(other) => Err(ClientError::UnexpectedReply {
                    addr,
                    reason: format!("{other:?}"),
                }),
                Err(source) => Err(ClientError::Protocol { addr, source }),
            };
        }
        read_more(&mut stream, addr, &mut buf, deadline).await?;
    }
}

async fn write(stream: &mut TcpStream, addr: SocketAddr, bytes: &[u8]) -> Result<(), ClientError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|source| ClientError::Io {
            action: "writing to",
            addr,
            source,
        })
}

async fn read_more(
    stream: &mut TcpStream,
    addr: SocketAddr,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), ClientError> {
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Err(_) => Err(ClientError::Timeout {
            action: "waiting for a reply from",
            addr,
        }),
        Ok(Ok(0)) => Err(ClientError::Closed { addr }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(ClientError::Io {
            action: "reading from",
            addr,
            source,
        }),
    }
}

/// The per-core task's state.
pub(crate) struct ConnectionTask {
    addr: SocketAddr,
    config: ClientConfig,
    calls: mpsc::Receiver<Call>,
    stream: Option<TcpStream>,
    read_buf: Vec<u8>,
    in_flight: VecDeque<InFlight>,
    in_flight_ops: usize,
    next_request_id: u64,
    retries_left: u32,
    /// When the oldest unanswered frame was sent, or the last reply arrived.
    waiting_since: Instant,
}

impl ConnectionTask {
    pub(crate) fn new(
        addr: SocketAddr,
        config: ClientConfig,
        stream: TcpStream,
        calls: mpsc::Receiver<Call>,
    ) -> Self {
        let retries_left = config.retries;
        ConnectionTask {
            addr,
            config,
            calls,
            stream: Some(stream),
            read_buf: Vec::with_capacity(64 * 1024),
            in_flight: VecDeque::new(),
            in_flight_ops: 0,
            next_request_id: 1,
            retries_left,
            waiting_since: Instant::now(),
        }
    }

    /// Serves calls until every `AsyncClient` handle is dropped and nothing is in flight.
    pub(crate) async fn run(mut self) {
        loop {
            let result = self.step().await;
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => self.recover(error).await,
            }
        }
    }

    /// Waits for one event and handles it; `Ok(false)` once the client is gone.
    async fn step(&mut self) -> Result<bool, ClientError> {
        let room = self.in_flight_ops < IN_FLIGHT_OPS_MAX;
        let deadline = self.waiting_since + self.config.read_timeout;
        let waiting = !self.in_flight.is_empty();
        if self.stream.is_none() {
            let Some(call) = self.calls.recv().await else {
                return Ok(false);
            };
            if let Err(error) = self.reconnect().await {
                let _ = call.reply.send(Err(error));
                return Ok(true);
            }
            return self.send(call).await.map(|()| true);
        }
        let stream = self.stream.as_mut().expect("checked above");
        tokio::select! {
            call = self.calls.recv(), if room => match call {
                Some(call) => self.send(call).await.map(|()| true),
                None => Ok(waiting),
            },
            read = stream.read_buf(&mut self.read_buf), if waiting => match read {
                Ok(0) => Err(ClientError::Closed { addr: self.addr }),
                Ok(_) => self.deliver().map(|()| true),
                Err(source) => Err(ClientError::Io { action: "reading from", addr: self.addr, source }),
            },
            () = tokio::time::sleep_until(deadline), if waiting => {
                Err(ClientError::Timeout { action: "waiting for a reply from", addr: self.addr })
            }
        }
    }

    /// Packs `first` and every queued call into frames and writes them.
    async fn send(&mut self, first: Call) -> Result<(), ClientError> {
        let mut pending = VecDeque::from([first]);
        while let Ok(call) = self.calls.try_recv() {
            pending.push_back(call);
        }
        let mut out = Vec::new();
        while let Some(call) = pending.pop_front() {
            let durability = call.durability;
            let mut frame_calls = vec![call];
            let mut op_count = frame_calls[0].ops.len();
            while let Some(next) = pending.front() {
                if next.durability != durability || op_count + next.ops.len() > BATCH_OPS_MAX {
                    break;
                }
                op_count += next.ops.len();
                frame_calls.push(pending.pop_front().expect("front exists"));
            }
            let in_flight = self.encode_frame(frame_calls, durability, op_count)?;
            out.extend_from_slice(&in_flight.bytes);
            if self.in_flight.is_empty() {
                self.waiting_since = Instant::now();
            }
            self.in_flight_ops += in_flight.op_count;
            self.in_flight.push_back(in_flight);
        }
        let stream = self.stream.as_mut().expect("connected before sending");
        write(stream, self.addr, &out).await
    }

    fn encode_frame(
        &mut self,
        calls: Vec<Call>,
        durability: Durability,
        op_count: usize,
    ) -> Result<InFlight, ClientError> {
        let mutates = calls.iter().flat_map(|call| &call.ops).any(Op::is_mutation);
        let idempotency_key = (mutates && self.config.retries > 0).then(random_idempotency_key);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut bytes = Vec::new();
        let mut writer = BatchWriter::begin(&mut bytes, request_id, durability, idempotency_key);
        for op in calls.iter().flat_map(|call| &call.ops) {
            writer.push(op).map_err(ClientError::Encode)?;
        }
        writer.finish().map_err(ClientError::Encode)?;
        let calls = calls
            .into_iter()
            .map(|call| (call.ops.len(), call.reply))
            .collect();
        Ok(InFlight {
            request_id,
            bytes,
            retry_safe: !mutates || idempotency_key.is_some(),
            calls,
            op_count,
        })
    }

    /// Hands every whole reply in the read buffer to its calls.
    fn deliver(&mut self) -> Result<(), ClientError> {
        let addr = self.addr;
        let mut consumed = 0;
        while let Some(frame) = decode_reply(&self.read_buf[consumed..])
            .map_err(|source| ClientError::Protocol { addr, source })?
        {
            consumed += frame.frame_bytes;
            let Some(in_flight) = self.in_flight.pop_front() else {
                return Err(ClientError::UnexpectedReply {
                    addr,
                    reason: "reply with nothing in flight".to_owned(),
                });
            };
            self.in_flight_ops -= in_flight.op_count;
            if frame.request_id != in_flight.request_id {
                let reason = format!(
                    "reply to {} while waiting for {}",
                    frame.request_id, in_flight.request_id
                );
                self.in_flight.push_front(in_flight);
                return Err(ClientError::UnexpectedReply { addr, reason });
            }
            let results: Result<Vec<OpResult>, ClientError> = match frame.reply {
                Ok(Reply::BatchReply(reply)) if reply.result_count() == in_flight.op_count => {
                    Ok(reply.results().map(from_reply).collect())
                }
                Ok(Reply::Error(error)) => Err(ClientError::Server {
                    code: error.code,
                    message: error.message.to_owned(),
                }),
                Ok(other) => Err(ClientError::UnexpectedReply {
                    addr,
                    reason: format!("{other:?}"),
                }),
                Err(source) => Err(ClientError::Protocol { addr, source }),
            };
            answer(in_flight.calls, results);
            self.retries_left = self.config.retries;
            self.waiting_since = Instant::now();
        }
        self.read_buf.drain(..consumed);
        Ok(())
    }

    /// After a failure: resend what is safe to resend on a new connection, fail the rest.
    async fn recover(&mut self, error: ClientError) {
        self.stream = None;
        self.read_buf.clear();
        let all_safe = self.in_flight.iter().all(|in_flight| in_flight.retry_safe);
        if error.is_transient() && all_safe && self.retries_left > 0 && !self.in_flight.is_empty() {
            self.retries_left -= 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.reconnect().await.is_ok() {
                let bytes: Vec<u8> = self
                    .in_flight
                    .iter()
                    .flat_map(|in_flight| in_flight.bytes.clone())
                    .collect();
                let stream = self.stream.as_mut().expect("reconnected");
                if write(stream, self.addr, &bytes).await.is_ok() {
                    self.waiting_since = Instant::now();
                    return;
                }
                self.stream = None;
            }
        }
        for in_flight in self.in_flight.drain(..) {
            answer(in_flight.calls, Err(error.replicate()));
        }
        self.in_flight_ops = 0;
        self.retries_left = self.config.retries;
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let (stream, _hello) = open(self.addr, &self.config).await?;
        self.stream = Some(stream);
        Ok(())
    }
}

/// Splits a frame's results among the calls that share it.
fn answer(calls: Vec<(usize, ReplySender)>, results: Result<Vec<OpResult>, ClientError>) {
    match results {
        Ok(results) => {
            let mut results = results.into_iter();
            for (count, reply) in calls {
                let _ = reply.send(Ok(results.by_ref().take(count).collect()));
            }
        }
        Err(error) => {
            for (_, reply) in calls {
                let _ = reply.send(Err(error.replicate()));
            }
        }
    }
}
