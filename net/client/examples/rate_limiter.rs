//! A per-user rate limiter on Tally: at most LIMIT requests per user per window, enforced
//! by the server with a ceiling, so concurrent callers on many machines can never let
//! more through, and retries never count twice (idempotency keys).
//!
//! Run against a running `tallyd`:
//!
//! ```text
//! cargo run -p tally-client --example rate_limiter -- 127.0.0.1:7878
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use tally_client::{BoundPolicy, Client, ClientError, Op, Status};

const LIMIT: i64 = 5;
const WINDOW_SECONDS: u64 = 60;

/// Counts one request for `user`; true if it is within the limit.
fn allow(client: &mut Client, user: &str) -> Result<bool, ClientError> {
    let window = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / WINDOW_SECONDS;
    let key = format!("rate:{user}:{window}");
    // Setting the same bounds again is harmless, and lets the first caller of a window
    // create them. Both operations go to the key's owning core in one round trip.
    let ops = [
        Op::SetBounds {
            key: key.as_bytes(),
            floor: Some(0),
            ceiling: Some(LIMIT),
        },
        Op::Add {
            key: key.as_bytes(),
            delta: 1,
            policy: BoundPolicy::Reject,
        },
    ];
    let results = client.batch(&ops)?;
    match results[1] {
        Ok(_) => Ok(true),
        Err(rejection) if rejection.status == Status::AboveCeiling => Ok(false),
        Err(rejection) => Err(ClientError::Rejected(rejection)),
    }
}

fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".to_owned());
    let mut client = Client::connect(addr.as_str())?;
    for attempt in 1..=8 {
        let verdict = if allow(&mut client, "alice")? {
            "allowed"
        } else {
            "limited"
        };
        println!("request {attempt}: {verdict}");
    }
    Ok(())
}
