//! An exact likes counter on Tally: every like and unlike is counted exactly once, even
//! when a call ends without an answer ([`ClientError::OutcomeUnknown`]: the server may or
//! may not have applied it) or is refused for now ([`ClientError::NotApplied`]).
//!
//! The procedure: give each like its own idempotency key when it is made
//! ([`random_idempotency_key`]), keep the key with it until the server has answered, and
//! send it again after such an error with the same key and the same operation. The
//! server applies a key's batch at most once within its idempotency window (10 minutes by
//! default, `tallyd --idempotency-window-s`), so repeats return the first application's
//! value instead of counting again. Never repeat a like under a new key (a plain
//! `client.incr` again): if the first attempt was applied, that counts it twice. A like
//! still failing after [`ATTEMPTS_MAX`] attempts is returned to the caller, who should
//! keep it, key included, and send it again later (a queue), inside the window.
//!
//! The floor 0 keeps a post's count from going negative: an unlike of a post at 0 is
//! refused (`Status::BelowFloor`), which is final, not retried.
//!
//! Run against a running `tallyd`:
//!
//! ```text
//! cargo run -p tally-client --example likes -- 127.0.0.1:7878
//! ```

use std::time::Duration;

use tally_client::{random_idempotency_key, BoundPolicy, Client, ClientError, Durability, Op};

/// Attempts per like before it goes back to the caller.
const ATTEMPTS_MAX: u32 = 5;
/// Wait before the second attempt, doubling after each.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// A like (+1) or unlike (-1) of a post, with the idempotency key that makes it count once.
#[derive(Clone, Debug)]
struct Like {
    post: String,
    delta: i64,
    idempotency_key: u128,
}

impl Like {
    /// A new like: its key is made once, here, and reused by every attempt.
    fn new(post: &str, delta: i64) -> Like {
        Like {
            post: format!("likes:{post}"),
            delta,
            idempotency_key: random_idempotency_key(),
        }
    }
}

/// Whether a failed attempt should be sent again under the same key: it may have been
/// applied (`OutcomeUnknown`), or nothing was applied and a later attempt may succeed
/// (`NotApplied`, a connection that could not be opened, ...).
fn worth_repeating(error: &ClientError) -> bool {
    matches!(error, ClientError::OutcomeUnknown { .. }) || error.is_transient()
}

/// Counts `like` exactly once and returns the post's count right after it was applied.
fn count(client: &mut Client, like: &Like) -> Result<i64, ClientError> {
    let op = Op::Add {
        key: like.post.as_bytes(),
        delta: like.delta,
        policy: BoundPolicy::Reject,
    };
    let mut wait = BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        match client.execute_idempotent(&op, Durability::Durable, like.idempotency_key) {
            Ok(outcome) => return Ok(outcome.value),
            Err(error) if worth_repeating(&error) && attempt < ATTEMPTS_MAX => {
                attempt += 1;
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Sets the floor that keeps a post's count from going negative.
fn create_post(client: &mut Client, post: &str) -> Result<(), ClientError> {
    client.set_bounds(format!("likes:{post}"), Some(0), None)?;
    Ok(())
}

fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".to_owned());
    let mut client = Client::connect(addr.as_str())?;
    create_post(&mut client, "p1")?;
    for delta in [1, 1, -1] {
        let like = Like::new("p1", delta);
        println!("{like:?} -> {}", count(&mut client, &like)?);
    }
    Ok(())
}

#[cfg(test)]
#[path = "../tests/fake_server/mod.rs"]
mod fake_server;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use tally_client::{ClientConfig, Status};

    use super::*;
    use fake_server::FakeServer;

    #[test]
    fn a_like_whose_first_attempt_is_unanswered_counts_once() {
        let server = Arc::new(FakeServer::start(2, 16));
        let config = ClientConfig {
            call_timeout: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let mut client = Client::connect_with(server.main_addr, config).unwrap();
        // The first attempt is applied, its connection dropped, and the server goes away:
        // that attempt ends `OutcomeUnknown`. The server is back a little later.
        server.state.drop_after_apply.store(1, Ordering::SeqCst);
        server
            .state
            .closed_ports_after_apply
            .store(true, Ordering::SeqCst);
        let restarter = {
            let server = server.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                server
                    .state
                    .closed_ports_after_apply
                    .store(false, Ordering::SeqCst);
                server.reopen_port(None);
                server.reopen_port(Some(0));
                server.reopen_port(Some(1));
            })
        };
        let like = Like::new("p1", 1);
        assert_eq!(count(&mut client, &like).unwrap(), 1);
        restarter.join().unwrap();
        assert_eq!(server.value("likes:p1"), Some(1));
        assert!(server.state.duplicate_batches.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn an_unlike_at_zero_is_refused_and_not_repeated() {
        let server = FakeServer::start(1, 4);
        let mut client = Client::connect(server.main_addr).unwrap();
        create_post(&mut client, "p2").unwrap();
        let error = count(&mut client, &Like::new("p2", -1)).unwrap_err();
        let ClientError::Rejected(rejection) = error else {
            panic!("{error:?}");
        };
        assert_eq!(rejection.status, Status::BelowFloor);
        assert_eq!(count(&mut client, &Like::new("p2", 1)).unwrap(), 1);
    }
}
