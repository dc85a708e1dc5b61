//! `tally`: the command-line client for a running `tallyd`.
//!
//! One operation per invocation (`incr`, `decr`, `get`, `set`, `del`, `exists`, `bounds`),
//! or many with `batch`, which reads one operation per line from stdin and sends them in
//! frames of up to 10,000. Output is a plain value for people, or one JSON object per
//! result with `--json`. Exit status: 0 success, 1 an operation was rejected (a bound, an
//! overflow, ...), 2 the call failed (connection, server error, bad input).

mod batch_input;
mod output;

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tally_client::{BoundPolicy, Client, ClientConfig, ClientError, Durability, Op};

use crate::output::{Printer, Verdict};

/// Exit status when an operation was rejected.
const EXIT_REJECTED: u8 = 1;
/// Exit status when the call failed.
const EXIT_FAILED: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Talk to a running tallyd: counters from the shell and from scripts"
)]
#[command(after_help = "Exit status: 0 success, 1 an operation was rejected, 2 the call failed.")]
struct Cli {
    /// The server's main address.
    #[arg(long, default_value = "127.0.0.1:7878", global = true)]
    addr: String,
    /// Print one JSON object per result instead of plain values.
    #[arg(long, global = true)]
    json: bool,
    /// When the server acknowledges writes (default: the server's own setting).
    #[arg(long, value_enum, global = true)]
    durability: Option<DurabilityArg>,
    /// Give up on a reply after this many milliseconds.
    #[arg(long, default_value_t = 5000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    /// Reply after the write is synced to disk.
    Durable,
    /// Reply once applied in memory; synced shortly after.
    Relaxed,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add DELTA (default 1) and print the new value.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
    },
    /// Subtract DELTA (default 1) and print the new value.
    Decr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
    },
    /// Print the value (0 if the counter does not exist).
    Get { key: String },
    /// Set the value and print it.
    Set {
        key: String,
        #[arg(allow_negative_numbers = true)]
        value: i64,
    },
    /// Delete the counter.
    Del { key: String },
    /// Print whether the counter exists.
    Exists { key: String },
    /// Set the floor and ceiling (an omitted bound is cleared).
    Bounds {
        key: String,
        #[arg(long, allow_negative_numbers = true)]
        floor: Option<i64>,
        #[arg(long, allow_negative_numbers = true)]
        ceiling: Option<i64>,
    },
    /// Read operations from stdin, one per line ("incr page:1 5", "get page:1",
    /// "bounds k --floor 0 --ceiling 9"; "#" starts a comment), print one result per line.
    Batch,
    /// Check the server answers.
    Ping,
    /// Print the server's statistics.
    Stats,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut printer = Printer::new(cli.json);
    match run(&cli, &mut printer) {
        Ok(Verdict::AllApplied) => ExitCode::SUCCESS,
        Ok(Verdict::SomeRejected) => ExitCode::from(EXIT_REJECTED),
        Err(error) => {
            printer.failure(&error);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn config(cli: &Cli) -> ClientConfig {
    let durability = match cli.durability {
        None => Durability::ServerDefault,
        Some(DurabilityArg::Durable) => Durability::Durable,
        Some(DurabilityArg::Relaxed) => Durability::Relaxed,
    };
    ClientConfig {
        client_name: "tally-cli".to_owned(),
        read_timeout: Duration::from_millis(cli.timeout_ms.max(1)),
        durability,
        // One-shot commands gain nothing from spinning.
        spin: Duration::ZERO,
        ..ClientConfig::default()
    }
}

fn run(cli: &Cli, printer: &mut Printer) -> Result<Verdict, CliError> {
    let mut client = Client::connect_with(cli.addr.as_str(), config(cli))?;
    let op = match &cli.command {
        Command::Batch => return run_batch(&mut client, printer),
        Command::Ping => {
            client.ping()?;
            printer.line("PONG", &serde_json::json!({"ok": true, "reply": "pong"}));
            return Ok(Verdict::AllApplied);
        }
        Command::Stats => {
            printer.stats(&client.stats()?);
            return Ok(Verdict::AllApplied);
        }
        command => single_op(command)?,
    };
    let results = client.batch(std::slice::from_ref(&op))?;
    Ok(printer.result(&op, &results[0], false))
}

/// The operation a single-operation command stands for.
fn single_op(command: &Command) -> Result<Op, CliError> {
    let key = |key: &String| key.clone().into_bytes();
    let policy = BoundPolicy::Reject;
    Ok(match command {
        Command::Incr { key: name, delta } => Op::Add {
            key: key(name),
            delta: *delta,
            policy,
        },
        Command::Decr { key: name, delta } => {
            let delta = delta.checked_neg().ok_or(CliError::Input(
                "decr by -9223372036854775808 overflows".to_owned(),
            ))?;
            Op::Add {
                key: key(name),
                delta,
                policy,
            }
        }
        Command::Get { key: name } => Op::Get { key: key(name) },
        Command::Set { key: name, value } => Op::Set {
            key: key(name),
            value: *value,
            policy,
        },
        Command::Del { key: name } => Op::Delete { key: key(name) },
        Command::Exists { key: name } => Op::Exists { key: key(name) },
        Command::Bounds {
            key: name,
            floor,
            ceiling,
        } => Op::SetBounds {
            key: key(name),
            floor: *floor,
            ceiling: *ceiling,
        },
        Command::Batch | Command::Ping | Command::Stats => unreachable!("handled by the caller"),
    })
}

/// Streams stdin in batches of up to 10,000 operations; a line that does not parse stops
/// the run after the operations before it were sent.
fn run_batch(client: &mut Client, printer: &mut Printer) -> Result<Verdict, CliError> {
    let stdin = std::io::stdin().lock();
    let mut lines = stdin.lines().enumerate();
    let mut verdict = Verdict::AllApplied;
    loop {
        let (ops, parse_error) =
            batch_input::read_chunk(&mut lines, tally_protocol::BATCH_OPS_MAX)?;
        if !ops.is_empty() {
            let results = client.batch(&ops)?;
            for (op, result) in ops.iter().zip(&results) {
                verdict = verdict.and(printer.result(op, result, true));
            }
            printer.flush();
        }
        if let Some(error) = parse_error {
            return Err(error);
        }
        if ops.is_empty() {
            return Ok(verdict);
        }
    }
}

/// Why the command failed as a whole.
#[derive(Debug)]
pub(crate) enum CliError {
    Client(ClientError),
    Input(String),
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Client(error)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Client(error) => write!(formatter, "{error}"),
            CliError::Input(message) => write!(formatter, "{message}"),
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`tally batch | head`).
pub(crate) fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}
