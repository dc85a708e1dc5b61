//! A per-user rate limiter on Tally: at most LIMIT requests per user per window, enforced
//! by the server with a ceiling, so concurrent callers (threads, processes, machines)
//! never let more through in a window, and retries never count twice (idempotency keys).
//! Callers on several machines share the limit only as far as their clocks agree: each
//! picks the window from its own clock, and one whose clock is off counts into another
//! window's key.
//!
//! Tally has no expiry, so window keys would pile up (one per user per window, forever):
//! the call that creates a window's counter deletes the previous window's. A user who
//! stops sending leaves their last window's key behind; sweep those with a periodic job
//! if users come and go.
//!
//! An error from `allow` may have counted the request (`ClientError::OutcomeUnknown`, or
//! an async call whose future was dropped): do not call `allow` again for the same request.
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

/// The counter of `user`'s requests in `window`.
fn window_key(user: &str, window: u64) -> String {
    format!("rate:{user}:{window}")
}

/// The current window, by this machine's clock.
fn current_window() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / WINDOW_SECONDS
}

/// Counts one request of `user` in `window`; true if it is within the limit.
fn allow(client: &mut Client, user: &str, window: u64) -> Result<bool, ClientError> {
    let key = window_key(user, window);
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
    // Exactly one call sees the window's counter not existing yet (the server applies
    // one key's operations one at a time): that one deletes the previous window's.
    if !results[0]?.existed && window > 0 {
        client.del(window_key(user, window - 1))?;
    }
    match results[1] {
        Ok(_) => Ok(true),
        Err(rejection) if rejection.status == Status::AboveCeiling => Ok(false),
        Err(rejection) => Err(rejection.into()),
    }
}

fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".to_owned());
    let mut client = Client::connect(addr.as_str())?;
    for attempt in 1..=8 {
        let verdict = if allow(&mut client, "alice", current_window())? {
            "allowed"
        } else {
            "limited"
        };
        println!("request {attempt}: {verdict}");
    }
    Ok(())
}

#[cfg(test)]
#[path = "../tests/fake_server/mod.rs"]
mod fake_server;

#[cfg(test)]
mod tests {
    use super::*;
    use fake_server::FakeServer;

    #[test]
    fn every_window_is_limited_and_the_previous_one_deleted() {
        let server = FakeServer::start(2, 16);
        let mut client = Client::connect(server.main_addr).unwrap();
        for window in 7..10 {
            let allowed = (0..LIMIT + 3)
                .filter(|_| allow(&mut client, "alice", window).unwrap())
                .count();
            assert_eq!(allowed as i64, LIMIT, "window {window}");
            assert_eq!(server.value(&window_key("alice", window)), Some(LIMIT));
            let previous = window_key("alice", window - 1);
            assert_eq!(server.value(&previous), None, "{previous} was deleted");
        }
    }
}
