//! Whole messages: what a server reads ([`Request`]) and what a client reads ([`Reply`]).
//!
//! Decoding is the second step after [`crate::decode_frame`]: the frame is already
//! delimited, so any error here is recoverable (skip the frame, answer with an `Error`).
//!
//! Ordering: a server answers the requests of one connection in the order it received
//! them, each reply echoing its request's id. Clients may pipeline (send many requests
//! before reading any reply) and may rely on that order; the id lets them check it.

use crate::batch::{BatchRef, BatchReplyRef};
use crate::control::{ErrorReply, StatsReply};
use crate::error::ProtocolError;
use crate::frame::{decode_frame, MessageType, RawFrame};
use crate::handshake::{Hello, HelloReply};

/// A message a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// The first frame on every connection.
    Hello(Hello<'a>),
    /// Liveness check.
    Ping,
    /// Operations on counters.
    Batch(BatchRef<'a>),
    /// Server statistics.
    Stats,
}

/// A message a server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// Answer to `Hello`.
    HelloReply(HelloReply),
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Batch`.
    BatchReply(BatchReplyRef<'a>),
    /// Answer to `Stats`.
    StatsReply(StatsReply),
    /// The request was refused as a whole.
    Error(ErrorReply<'a>),
}

impl<'a> RawFrame<'a> {
    fn checked_type(&self) -> Result<MessageType, ProtocolError> {
        let message_type = MessageType::from_u8(self.message_type)?;
        if self.reserved != 0 {
            return Err(ProtocolError::ReservedNotZero(self.reserved));
        }
        if message_type != MessageType::Batch && self.flags != 0 {
            return Err(ProtocolError::UnknownFlags {
                message_type: self.message_type,
                flags: self.flags,
            });
        }
        Ok(message_type)
    }

    fn empty_body(&self) -> Result<(), ProtocolError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                count: self.body.len(),
            })
        }
    }

    /// Decodes the body as a request (server side).
    pub fn request(&self) -> Result<Request<'a>, ProtocolError> {
        match self.checked_type()? {
            MessageType::Hello => Ok(Request::Hello(Hello::decode(self.body)?)),
            MessageType::Ping => self.empty_body().map(|()| Request::Ping),
            MessageType::Batch => Ok(Request::Batch(BatchRef::decode(self.flags, self.body)?)),
            MessageType::Stats => self.empty_body().map(|()| Request::Stats),
            _ => Err(ProtocolError::UnexpectedMessageType(self.message_type)),
        }
    }

    /// Decodes the body as a reply (client side).
    pub fn reply(&self) -> Result<Reply<'a>, ProtocolError> {
        match self.checked_type()? {
            MessageType::HelloReply => Ok(Reply::HelloReply(HelloReply::decode(self.body)?)),
            MessageType::Pong => self.empty_body().map(|()| Reply::Pong),
            MessageType::BatchReply => Ok(Reply::BatchReply(BatchReplyRef::decode(self.body)?)),
            MessageType::StatsReply => Ok(Reply::StatsReply(StatsReply::decode(self.body)?)),
            MessageType::Error => Ok(Reply::Error(ErrorReply::decode(self.body)?)),
            _ => Err(ProtocolError::UnexpectedMessageType(self.message_type)),
        }
    }
}

/// One decoded request with its id and the bytes its frame took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrame<'a> {
    /// The id to echo in the reply.
    pub request_id: u64,
    /// The decoded request, or why it could not be decoded (recoverable: answer it with
    /// an `Error` reply carrying `request_id` and go on with the next frame).
    pub request: Result<Request<'a>, ProtocolError>,
    /// Bytes of `buf` the frame took.
    pub frame_bytes: usize,
}

/// Delimits and decodes the request at the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Err`: fatal framing error, reply and close.
/// `Ok(Some(frame))`: consume `frame.frame_bytes`, then handle `frame.request`.
pub fn decode_request(buf: &[u8]) -> Result<Option<RequestFrame<'_>>, ProtocolError> {
    Ok(decode_frame(buf)?.map(|(raw, frame_bytes)| RequestFrame {
        request_id: raw.request_id,
        request: raw.request(),
        frame_bytes,
    }))
}

/// One decoded reply with its id and the bytes its frame took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyFrame<'a> {
    /// The id of the request this answers.
    pub request_id: u64,
    /// The decoded reply, or why it could not be decoded.
    pub reply: Result<Reply<'a>, ProtocolError>,
    /// Bytes of `buf` the frame took.
    pub frame_bytes: usize,
}

/// Delimits and decodes the reply at the start of `buf` (client side).
pub fn decode_reply(buf: &[u8]) -> Result<Option<ReplyFrame<'_>>, ProtocolError> {
    Ok(decode_frame(buf)?.map(|(raw, frame_bytes)| ReplyFrame {
        request_id: raw.request_id,
        reply: raw.reply(),
        frame_bytes,
    }))
}
