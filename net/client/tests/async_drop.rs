//! Dropping every `AsyncClient` handle while a frame is in flight: the connection task
//! waits for the reply without spinning. In its own test binary, so the process's CPU
//! time is this test's alone.

mod fake_server;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_server::FakeServer;
use tally_client::{AsyncClient, ClientConfig};

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_client_with_a_frame_in_flight_does_not_spin() {
    let server = FakeServer::start(1, 4);
    let config = ClientConfig {
        read_timeout: Duration::from_secs(20),
        retries: 0,
        ..ClientConfig::default()
    };
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    server.state.stall.store(true, Ordering::SeqCst);
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.incr("stalled", 1).await }
    });
    while server.state.batch_frames.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    drop(client);
    let before = process_cpu_time();
    // The runtime has nothing to run but the connection task, which awaits the reply.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = process_cpu_time() - before;
    assert!(
        used < Duration::from_millis(300),
        "{used:?} of CPU in 1 s while waiting for a reply"
    );
}
