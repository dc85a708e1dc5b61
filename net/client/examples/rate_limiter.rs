//! A per-user rate limiter on Tally: at most LIMIT requests per user per window, enforced
//! by the server with a ceiling, so concurrent callers (threads, processes, machines)
//! never let more through in a window, and the client never resends a counted request
//! (without automatic idempotency keys, the default, a lost reply ends the call with
//! `OutcomeUnknown` rather than a resend).
//! Callers on several machines share the limit only as far as their clocks agree: each
//! picks the window from its own clock, and one whose clock is off counts into another
//! window's key.
//!
//! Tally has no expiry, so window keys would pile up (one per user per window, forever):
//! the call that creates window `w`'s counter deletes window `w - 2`'s, so each user
//! keeps at most two windows. Not `w - 1`: a request that picked window `w - 1` just
//! before the boundary and reaches the server a little later (queued, preempted, or
//! resent by the client within `call_timeout`) would find that counter gone, create it
//! afresh at 0 and be allowed, with LIMIT more after it. Keeping the previous window
//! makes that impossible as long as a request reaches the server within one window of
//! picking its own: keep `ClientConfig::call_timeout` (10 s by default) and any queueing
//! before `allow` well under `WINDOW_SECONDS`. A user who stops sending, or skips a
//! windows, leaves its last windows' keys behind; sweep those with a periodic job if
//! users come and go.
//!
//! The verdict comes from the `Add`, which says whether this request was counted. The
//! `SetBounds` before it is refused (`OutOfBounds`, bounds unchanged) when LIMIT was
//! lowered below what the window has already counted (a configuration change, or a
//! rolling deploy with two LIMITs live): the `Add` then runs under the older ceiling, so
//! `allow` judges its new value against the current LIMIT and never turns the
//! `SetBounds` refusal into an error that would read "counter unchanged".
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
    allow_with_limit(client, user, window, LIMIT)
}

/// [`allow`] under a given limit (which may change between calls, even mid-window).
/// `Ok(false)` means "over the limit", whether or not the request was counted.
fn allow_with_limit(
    client: &mut Client,
    user: &str,
    window: u64,
    limit: i64,
) -> Result<bool, ClientError> {
    let key = window_key(user, window);
    // Setting the same bounds again is harmless, and lets the first caller of a window
    // create them. Both operations go to the key's owning core in one round trip.
    let ops = [
        Op::SetBounds {
            key: key.as_bytes(),
            floor: Some(0),
            ceiling: Some(limit),
        },
        Op::Add {
            key: key.as_bytes(),
            delta: 1,
            policy: BoundPolicy::Reject,
        },
    ];
    let results = client.batch(&ops)?;
    // The Add decides: counted within the current limit, or not. A counter above a
    // lowered limit (its SetBounds refused) still counts under its old ceiling.
    let allowed = match results[1] {
        Ok(outcome) => outcome.value <= limit,
        Err(rejection) if rejection.status == Status::AboveCeiling => false,
        Err(rejection) => return Err(rejection.into()),
    };
    // Exactly one call sees the window's counter not existing yet (the server applies
    // one key's operations one at a time, and the window is deleted only two windows
    // on): that one deletes the window before the previous one. A delete that fails
    // only leaves a key for the sweep: the verdict stands.
    let created = matches!(results[0], Ok(outcome) if !outcome.existed);
    if created && window >= 2 {
        if let Err(error) = client.del(window_key(user, window - 2)) {
            eprintln!("could not delete {}: {error}", window_key(user, window - 2));
        }
    }
    Ok(allowed)
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
    fn every_window_is_limited_and_the_one_before_the_previous_deleted() {
        let server = FakeServer::start(2, 16);
        let mut client = Client::connect(server.main_addr).unwrap();
        for window in 7..11 {
            let allowed = (0..LIMIT + 3)
                .filter(|_| allow(&mut client, "alice", window).unwrap())
                .count();
            assert_eq!(allowed as i64, LIMIT, "window {window}");
            assert_eq!(server.value(&window_key("alice", window)), Some(LIMIT));
            let previous = window_key("alice", window - 1);
            if window > 7 {
                assert_eq!(server.value(&previous), Some(LIMIT), "{previous} is kept");
            }
            let older = window_key("alice", window - 2);
            assert_eq!(server.value(&older), None, "{older} was deleted");
        }
    }

    /// A request that picked window 10 but arrives after window 11 began is still
    /// limited by window 10's counter, not given a fresh one (review1 F4).
    #[test]
    fn a_late_request_cannot_recreate_its_window() {
        let server = FakeServer::start(2, 16);
        let mut client = Client::connect(server.main_addr).unwrap();
        for _ in 0..LIMIT {
            assert!(allow(&mut client, "bob", 10).unwrap());
        }
        assert!(allow(&mut client, "bob", 11).unwrap());
        for _ in 0..LIMIT {
            assert!(!allow(&mut client, "bob", 10).unwrap(), "late: limited");
        }
        assert_eq!(server.value(&window_key("bob", 10)), Some(LIMIT));
        // Window 12 deletes window 10, and nothing brings it back.
        assert!(allow(&mut client, "bob", 12).unwrap());
        assert_eq!(server.value(&window_key("bob", 10)), None);
    }

    /// Lowering the limit below what the window already counted: every request is over
    /// the limit, said as `false`, never as an error that reads "counter unchanged"
    /// while the request was counted (review1 F11). Raising it lets requests through.
    #[test]
    fn a_limit_lowered_mid_window_limits_truthfully() {
        let server = FakeServer::start(2, 16);
        let mut client = Client::connect(server.main_addr).unwrap();
        let key = window_key("carol", 3);
        for _ in 0..7 {
            assert!(allow_with_limit(&mut client, "carol", 3, 10).unwrap());
        }
        for _ in 0..5 {
            assert!(!allow_with_limit(&mut client, "carol", 3, 5).unwrap());
        }
        // Counted under the old ceiling of 10 until it was reached.
        assert_eq!(server.value(&key), Some(10));
        assert!(allow_with_limit(&mut client, "carol", 3, 12).unwrap());
        assert_eq!(server.value(&key), Some(11));
    }
}
