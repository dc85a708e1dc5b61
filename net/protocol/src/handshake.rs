//! The handshake: `Hello` from the client, `HelloReply` with the shard map from the server.
//!
//! `Hello` body (header flags 0):
//!
//! ```text
//! offset size field
//!      0    4 magic           b"TALY"
//!      4    2 version         u16 LE, PROTOCOL_VERSION (1)
//!      6    1 name_length     u8
//!      7    n client_name     UTF-8, for the server's logs
//! ```
//!
//! `HelloReply` body (header flags 0), with C = core_count and P = partition_count:
//!
//! ```text
//! offset     size field
//!      0        2 version          u16 LE, the version the server will speak (1)
//!      2        8 server_id        u64 LE, random per server process
//!     10        4 partition_count  u32 LE, 1..=PARTITION_COUNT_MAX
//!     14        2 core_count       u16 LE, 1..=CORE_COUNT_MAX
//!     16      2*C shard_ports      u16 LE per core: the port on which that core accepts
//!                                  connections it serves itself (0: none, use the main port)
//!   16+2C     2*P owners           u16 LE per partition: the core that owns it (< C)
//! ```
//!
//! A key's partition is `xxh3_64(key) % partition_count` ([`crate::partition_of`]); its
//! owner is `owners[partition]`. Today's servers fill the table with `p % core_count`, but
//! clients must read the table, not assume the rule.

use crate::cursor::{put_short_str, Cursor};
use crate::error::ProtocolError;
use crate::frame::{begin_frame, finish_frame, MessageType};
use crate::{partition_of, FRAME_BYTES_MAX, MAGIC, PROTOCOL_VERSION};

/// The most partitions a shard map may list.
pub const PARTITION_COUNT_MAX: u32 = 1 << 16;
/// The most cores a shard map may list.
pub const CORE_COUNT_MAX: u16 = 1024;

const HELLO_REPLY_FIXED_BYTES: usize = 2 + 8 + 4 + 2;
const _: () = assert!(
    crate::frame::HEADER_BYTES
        + HELLO_REPLY_FIXED_BYTES
        + 2 * CORE_COUNT_MAX as usize
        + 2 * PARTITION_COUNT_MAX as usize
        <= FRAME_BYTES_MAX
);

/// The client's greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol version the client speaks.
    pub version: u16,
    /// A name for the server's logs.
    pub client_name: &'a str,
}

impl<'a> Hello<'a> {
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut cursor = Cursor::new(body);
        let magic: [u8; 4] = cursor.take(4, "magic")?.try_into().expect("4-byte slice");
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let version = cursor.u16("version")?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let client_name = cursor.short_str("client name")?;
        cursor.finish()?;
        Ok(Hello {
            version,
            client_name,
        })
    }
}

/// Appends a `Hello` frame; fails if `client_name` is over 255 bytes.
pub fn encode_hello(
    out: &mut Vec<u8>,
    request_id: u64,
    client_name: &str,
) -> Result<(), ProtocolError> {
    let start = begin_frame(out, MessageType::Hello, 0, request_id);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    if let Err(error) = put_short_str(out, client_name, "client name") {
        out.truncate(start);
        return Err(error);
    }
    finish_frame(out, start)
}

/// The server's answer to `Hello`: who it is and who owns which partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    /// The protocol version the server will speak on this connection.
    pub version: u16,
    /// Random per server process: a client that sees it change knows the server restarted.
    pub server_id: u64,
    /// How many partitions keys are spread over.
    pub partition_count: u32,
    /// Per core, the port on which it serves connections itself (0: none).
    pub shard_ports: Vec<u16>,
    /// Per partition, the index of the core that owns it.
    pub owners: Vec<u16>,
}

impl HelloReply {
    /// A shard map where partition `p` is owned by core `p % shard_ports.len()`.
    pub fn with_modulo_owners(
        server_id: u64,
        partition_count: u32,
        shard_ports: Vec<u16>,
    ) -> Result<Self, ProtocolError> {
        let core_count = shard_ports.len().max(1) as u32;
        let owners = (0..partition_count)
            .map(|partition| (partition % core_count) as u16)
            .collect();
        let reply = HelloReply {
            version: PROTOCOL_VERSION,
            server_id,
            partition_count,
            shard_ports,
            owners,
        };
        reply.validate()?;
        Ok(reply)
    }

    /// How many cores serve requests.
    pub fn core_count(&self) -> usize {
        self.shard_ports.len()
    }

    /// The index of the core that owns `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> usize {
        let partition = partition_of(key, self.partition_count);
        usize::from(self.owners[partition as usize])
    }

    /// Checks the map is consistent: counts in range, one owner per partition, each a core.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |reason| Err(ProtocolError::InvalidHandshake { reason });
        if self.partition_count == 0 || self.partition_count > PARTITION_COUNT_MAX {
            return invalid("partition count outside 1..=65536");
        }
        if self.shard_ports.is_empty() || self.shard_ports.len() > usize::from(CORE_COUNT_MAX) {
            return invalid("core count outside 1..=1024");
        }
        if self.owners.len() != self.partition_count as usize {
            return invalid("owner table length differs from the partition count");
        }
        if self
            .owners
            .iter()
            .any(|&owner| usize::from(owner) >= self.shard_ports.len())
        {
            return invalid("an owner names a core that does not exist");
        }
        Ok(())
    }

    /// Appends a `HelloReply` frame; fails if the map does not validate.
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) -> Result<(), ProtocolError> {
        self.validate()?;
        let start = begin_frame(out, MessageType::HelloReply, 0, request_id);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.server_id.to_le_bytes());
        out.extend_from_slice(&self.partition_count.to_le_bytes());
        out.extend_from_slice(&(self.shard_ports.len() as u16).to_le_bytes());
        for port in self.shard_ports.iter().chain(&self.owners) {
            out.extend_from_slice(&port.to_le_bytes());
        }
        finish_frame(out, start)
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut cursor = Cursor::new(body);
        let version = cursor.u16("version")?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let server_id = cursor.u64("server id")?;
        let partition_count = cursor.u32("partition count")?;
        let core_count = cursor.u16("core count")?;
        if partition_count > PARTITION_COUNT_MAX || core_count > CORE_COUNT_MAX {
            return Err(ProtocolError::InvalidHandshake {
                reason: "count over its limit",
            });
        }
        // Sizes are checked against the buffer before allocating, so a hostile count
        // cannot make us reserve more than the frame holds.
        let table_bytes = 2 * (usize::from(core_count) + partition_count as usize);
        if cursor.remaining_bytes() < table_bytes {
            return Err(ProtocolError::Truncated { what: "shard map" });
        }
        let mut read_table = |count: usize| -> Result<Vec<u16>, ProtocolError> {
            (0..count).map(|_| cursor.u16("shard map")).collect()
        };
        let shard_ports = read_table(usize::from(core_count))?;
        let owners = read_table(partition_count as usize)?;
        cursor.finish()?;
        let reply = HelloReply {
            version,
            server_id,
            partition_count,
            shard_ports,
            owners,
        };
        reply.validate()?;
        Ok(reply)
    }
}
