//! `tally`: the command-line client for a running `tallyd`.
//!
//! One operation per invocation (`incr`, `decr`, `get`, `set`, `del`, `exists`, `bounds`;
//! `bounds KEY` alone prints the floor and ceiling), or many with `batch`, which reads one operation per line from stdin and sends them in
//! frames of up to 10,000 after checking every line. Output is a plain value for people,
//! or one JSON object per result with `--json`, whose `outcome` says whether the change
//! took effect: `applied`, `not_applied` or `unknown`.
//!
//! Exit status ([`EXIT_STATUS_HELP`]): 0 success, 1 an operation was refused (a bound, an
//! overflow, ...; not applied), 2 the call failed and applied nothing (connection, server
//! error, bad input, a server asking to retry later), 3 the outcome is unknown: a change
//! may have been applied. A change sent as one request (a single command, or a batch of
//! at most 10,000 operations) carries an idempotency key, printed when the call fails:
//! running the same command again with `--idempotency-key KEY` applies it at most once.

mod batch_input;
mod output;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tally_client::{BoundPolicy, Client, ClientConfig, ClientError, Durability, Op};

use crate::batch_input::Request;
use crate::output::{Printer, Verdict};

/// Exit status when an operation was refused (not applied).
const EXIT_REJECTED: u8 = 1;
/// Exit status when the call failed and nothing of it was applied.
const EXIT_FAILED: u8 = 2;
/// Exit status when a change may or may not have been applied.
const EXIT_OUTCOME_UNKNOWN: u8 = 3;

/// The exit statuses, for `tally --help`.
const EXIT_STATUS_HELP: &str = "Exit status:
  0  success
  1  an operation was refused (a bound, an overflow, ...): it was not applied
  2  the call failed and applied nothing (connection refused, bad input, a server error),
     or an operation was refused for now, before it was applied (a server asking to
     retry later): running it again is safe (a batch: under the printed
     --idempotency-key, so that what was applied is not applied again)
  3  outcome unknown: a change may have been applied (no answer in time, or the server
     could not make it durable). Do not simply run it again, it may count twice: run it
     again with --idempotency-key KEY (the key printed with the error), which applies it
     at most once, or read the value to find out.
With --json every result and failure has \"outcome\": \"applied\", \"not_applied\" or
\"unknown\" (and \"idempotency_key\" when a failed change carried one).";

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Talk to a running tallyd: counters from the shell and from scripts"
)]
#[command(after_help = EXIT_STATUS_HELP)]
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
    /// Give up on a command after this many milliseconds, safe retries included (a
    /// change that may have been applied is then reported as an unknown outcome).
    #[arg(long, default_value_t = 5000, global = true)]
    timeout_ms: u64,
    /// Send a change under this idempotency key (32 hex digits) instead of a new one:
    /// the key a failed run printed, to run the same command again and have it applied at
    /// most once (within the server's idempotency window, 10 minutes by default). Only
    /// with the same operations: another command under it is refused.
    #[arg(long, value_parser = parse_idempotency_key, global = true)]
    idempotency_key: Option<u128>,
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
        /// At a bound, add as much as the bound allows (printed "(clamped)") instead of
        /// refusing.
        #[arg(long)]
        clamp: bool,
    },
    /// Subtract DELTA (default 1) and print the new value.
    Decr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
        /// At a bound, subtract as much as the bound allows (printed "(clamped)") instead
        /// of refusing.
        #[arg(long)]
        clamp: bool,
    },
    /// Print the value (0 if the counter does not exist).
    Get { key: String },
    /// Set the value and print it.
    Set {
        key: String,
        #[arg(allow_negative_numbers = true)]
        value: i64,
        /// Outside the bounds, set the nearest bound (printed "(clamped)") instead of
        /// refusing.
        #[arg(long)]
        clamp: bool,
    },
    /// Delete the counter, with its bounds: a later incr or set recreates it without a
    /// floor or ceiling (set them again with `tally bounds`).
    Del { key: String },
    /// Print whether the counter exists.
    Exists { key: String },
    /// Print the floor and ceiling, or set them: with --floor, --ceiling or both (an
    /// omitted one is cleared), or --clear to remove both.
    ///
    /// With none of these it prints the bounds: "floor 0, ceiling none" ("none": no
    /// bound on that side; a missing counter has none and is not created), or with
    /// --json {"op":"bounds","key":..,"ok":true,"floor":0,"ceiling":null,...}.
    #[command(group(clap::ArgGroup::new("bound").multiple(true)
        .args(["floor", "ceiling", "clear"])))]
    Bounds {
        key: String,
        /// The lowest value the counter may take.
        #[arg(long, allow_negative_numbers = true)]
        floor: Option<i64>,
        /// The highest value the counter may take.
        #[arg(long, allow_negative_numbers = true)]
        ceiling: Option<i64>,
        /// Remove both bounds.
        #[arg(long, conflicts_with_all = ["floor", "ceiling"])]
        clear: bool,
    },
    /// Read operations from stdin, one per line, and print one result per line.
    #[command(long_about = BATCH_HELP)]
    Batch,
    /// Check the server answers.
    Ping,
    /// Print every core's statistics, with totals where adding them up makes sense.
    Stats,
}

/// `tally batch --help`.
const BATCH_HELP: &str = "Read operations from stdin, one per line, and print one result \
per line (KEY<TAB>VALUE, or one JSON object per line with --json).

Lines:
  incr KEY [DELTA] [--clamp]     decr KEY [DELTA] [--clamp]     set KEY VALUE [--clamp]
  get KEY     del KEY     exists KEY     bounds KEY [--floor N] [--ceiling N] | --clear
  floor KEY   ceiling KEY   (read one bound: the bound, or \"none\")

--clamp applies as much as the counter's bounds allow instead of refusing (the result \
says \"(clamped)\"). Blank lines are skipped; a word starting with \"#\" begins a comment \
that runs to the end of the line. Keys cannot contain whitespace here.

All of stdin is read and checked first: if any line is bad, nothing is applied, every bad \
line is reported (line number and reason) and the exit status is 2. Up to 10,000 \
operations go in one request; a longer input is split into requests of 10,000 sent one \
after another, and each request is applied separately: if one fails (a lost connection, \
say), the requests before it have been applied and the ones after it have not. Up to \
10,000 operations, the one request carries an idempotency key (--idempotency-key, or a new \
one, printed if the call fails) so that the same input run again under that key is \
applied at most once.";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return refuse_arguments(&error),
    };
    let mut printer = Printer::new(cli.json);
    match run(&cli, &mut printer) {
        Ok(Verdict::AllApplied) => ExitCode::SUCCESS,
        Ok(Verdict::SomeRejected) => ExitCode::from(EXIT_REJECTED),
        Ok(Verdict::SomeNotApplied) => ExitCode::from(EXIT_FAILED),
        Ok(Verdict::SomeUnknown) => ExitCode::from(EXIT_OUTCOME_UNKNOWN),
        Err(error) => {
            printer.failure(&error);
            if error.is_outcome_unknown() {
                ExitCode::from(EXIT_OUTCOME_UNKNOWN)
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
    }
}

/// Reports bad arguments as clap does (help and version requests print and exit 0), and
/// with `--json` among the options also as a failure object on stdout, as every other
/// failure is: scripts that read stdout see why nothing was done.
fn refuse_arguments(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let json = std::env::args()
        .skip(1)
        .take_while(|argument| argument != "--")
        .any(|argument| argument == "--json");
    if json {
        let message = error.kind().as_str().unwrap_or("invalid arguments");
        let detail = error.to_string();
        let first_line = detail.lines().next().unwrap_or(message);
        let first_line = first_line.strip_prefix("error: ").unwrap_or(first_line);
        write_stdout(
            &serde_json::json!({"ok": false, "outcome": "not_applied", "error": first_line})
                .to_string(),
        );
    }
    let _ = error.print();
    ExitCode::from(EXIT_FAILED)
}

/// `--idempotency-key`: exactly 32 hex digits, as `tally` prints keys, so that a key
/// pasted with a digit missing is refused rather than read as another key (whose
/// request would count again).
fn parse_idempotency_key(text: &str) -> Result<u128, String> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() != 32 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "an idempotency key is 32 hex digits, as tally prints it ({} given)",
            hex.len()
        ));
    }
    u128::from_str_radix(hex, 16).map_err(|error| error.to_string())
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
        call_timeout: Duration::from_millis(cli.timeout_ms.max(1)),
        durability,
        // One-shot commands gain nothing from spinning.
        spin: Duration::ZERO,
        ..ClientConfig::default()
    }
}

fn run(cli: &Cli, printer: &mut Printer) -> Result<Verdict, CliError> {
    // Input is checked before connecting: bad input is reported the same way (exit 2,
    // nothing sent) whether or not a server is there.
    let connect = || Client::connect_with(cli.addr.as_str(), config(cli));
    match &cli.command {
        Command::Batch => {
            let parsed = batch_input::read_all(std::io::stdin().lock()).map_err(CliError::Input)?;
            if parsed.bad_line_count > 0 {
                return Err(CliError::BadLines(parsed));
            }
            run_batch(cli, &mut connect()?, printer, &parsed.requests)
        }
        Command::Ping => {
            connect()?.ping()?;
            printer.line("PONG", &serde_json::json!({"ok": true, "reply": "pong"}));
            Ok(Verdict::AllApplied)
        }
        Command::Stats => {
            printer.stats(&core_stats(&mut connect()?)?);
            Ok(Verdict::AllApplied)
        }
        Command::Bounds {
            key,
            floor: None,
            ceiling: None,
            clear: false,
        } => {
            let key = batch_input::checked_key(key.as_bytes()).map_err(CliError::Input)?;
            // A refused read is printed as one (exit 1), like any refused operation.
            let read = match connect()?.get_bounds(&key) {
                Ok(bounds) => Ok(bounds),
                Err(ClientError::Rejected(rejection)) => Err(rejection),
                Err(error) => return Err(error.into()),
            };
            Ok(printer.bounds(&key, read))
        }
        command => {
            let request = single_request(command).map_err(CliError::Input)?;
            let requests = std::slice::from_ref(&request);
            let idempotency_key = request_key(cli, requests)?;
            let ops = [request.op.clone()];
            let results = send(&mut connect()?, &ops, idempotency_key)?;
            let verdict = printer.result(&request, &results[0], false);
            advise_on_unknown(verdict, idempotency_key);
            Ok(verdict)
        }
    }
}

/// The idempotency key for `requests` sent as one request: `--idempotency-key`, or a new
/// one if they change counters; none for reads. `--idempotency-key` with more operations
/// than one request holds is bad input.
fn request_key(cli: &Cli, requests: &[Request]) -> Result<Option<u128>, CliError> {
    if requests.len() > tally_protocol::BATCH_OPS_MAX {
        return match cli.idempotency_key {
            Some(_) => Err(CliError::Input(format!(
                "--idempotency-key takes at most {} operations (one request), not {}",
                tally_protocol::BATCH_OPS_MAX,
                requests.len()
            ))),
            None => Ok(None),
        };
    }
    let mutates = requests.iter().any(|request| request.op.is_mutation());
    Ok(cli
        .idempotency_key
        .or_else(|| mutates.then(tally_client::random_idempotency_key)))
}

/// Sends `ops`, as one request under `idempotency_key` if there is one; a failure keeps
/// the key, so the user can run the command again under it.
fn send(
    client: &mut Client,
    ops: &[Op],
    idempotency_key: Option<u128>,
) -> Result<Vec<tally_client::OpResult>, CliError> {
    let durability = client.config().durability;
    match idempotency_key {
        Some(key) => client
            .batch_idempotent(ops, durability, key)
            .map_err(|error| CliError::Keyed(error, key)),
        None => Ok(client.batch(ops)?),
    }
}

/// Every core's statistics, in core order: each core is asked on its own shard port,
/// since a connection to the main port lands on one core only.
fn core_stats(client: &mut Client) -> Result<Vec<Vec<(String, u64)>>, CliError> {
    (0..client.connection_count())
        .map(|core| Ok(client.core_stats(core)?))
        .collect()
}

/// The operation a single-operation command stands for.
fn single_request(command: &Command) -> Result<Request, String> {
    let key = |key: &String| batch_input::checked_key(key.as_bytes());
    let policy = |clamp: bool| {
        if clamp {
            BoundPolicy::Clamp
        } else {
            BoundPolicy::Reject
        }
    };
    let (verb, op) = match command {
        Command::Incr {
            key: name,
            delta,
            clamp,
        } => (
            "incr",
            Op::Add {
                key: key(name)?,
                delta: *delta,
                policy: policy(*clamp),
            },
        ),
        Command::Decr {
            key: name,
            delta,
            clamp,
        } => (
            "decr",
            Op::Add {
                key: key(name)?,
                delta: batch_input::negated(*delta)?,
                policy: policy(*clamp),
            },
        ),
        Command::Get { key: name } => ("get", Op::Get { key: key(name)? }),
        Command::Set {
            key: name,
            value,
            clamp,
        } => (
            "set",
            Op::Set {
                key: key(name)?,
                value: *value,
                policy: policy(*clamp),
            },
        ),
        Command::Del { key: name } => ("del", Op::Delete { key: key(name)? }),
        Command::Exists { key: name } => ("exists", Op::Exists { key: key(name)? }),
        Command::Bounds {
            key: name,
            floor,
            ceiling,
            clear: _,
        } => (
            "bounds",
            Op::SetBounds {
                key: key(name)?,
                floor: *floor,
                ceiling: *ceiling,
            },
        ),
        Command::Batch | Command::Ping | Command::Stats => unreachable!("handled by the caller"),
    };
    Ok(Request { verb, op })
}

/// Sends checked requests in frames of up to 10,000 operations, one frame after another;
/// up to 10,000, in one request under an idempotency key (see [`request_key`]).
fn run_batch(
    cli: &Cli,
    client: &mut Client,
    printer: &mut Printer,
    requests: &[Request],
) -> Result<Verdict, CliError> {
    let idempotency_key = request_key(cli, requests)?;
    let mut verdict = Verdict::AllApplied;
    for chunk in requests.chunks(tally_protocol::BATCH_OPS_MAX) {
        let ops: Vec<Op> = chunk.iter().map(|request| request.op.clone()).collect();
        let results = send(client, &ops, idempotency_key)?;
        assert_eq!(results.len(), chunk.len(), "one result per operation");
        for (request, result) in chunk.iter().zip(&results) {
            verdict = verdict.and(printer.result(request, result, true));
        }
        printer.flush();
    }
    advise_on_unknown(verdict, idempotency_key);
    Ok(verdict)
}

/// After an operation whose outcome is unknown (`Unavailable`, detail 0), or that the
/// server refused for now (detail 1), says how to repeat the request without counting
/// twice.
fn advise_on_unknown(verdict: Verdict, idempotency_key: Option<u128>) {
    if verdict == Verdict::SomeNotApplied {
        match idempotency_key {
            Some(key) => eprintln!(
                "tally: an operation was refused for now, before it was applied; run the same \
                 command later with --idempotency-key {key:032x} to apply what was not, at \
                 most once"
            ),
            None => eprintln!(
                "tally: an operation was refused for now, before it was applied; the others \
                 were: run only the refused ones again later"
            ),
        }
        return;
    }
    if verdict != Verdict::SomeUnknown {
        return;
    }
    match idempotency_key {
        Some(key) => eprintln!(
            "tally: an operation may have been applied; run the same command with \
             --idempotency-key {key:032x} to apply what was not, at most once"
        ),
        None => eprintln!(
            "tally: an operation may have been applied; read the value before running it again"
        ),
    }
}

/// Why the command failed as a whole.
#[derive(Debug)]
pub(crate) enum CliError {
    Client(ClientError),
    /// A request sent under this idempotency key failed.
    Keyed(ClientError, u128),
    Input(String),
    /// `tally batch` input with bad lines; nothing was sent.
    BadLines(batch_input::Parsed),
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Client(error)
    }
}

impl CliError {
    /// Whether a change may have been applied (exit status 3): also a batch applied in
    /// part (`PartlyApplied`), which did change counters.
    pub(crate) fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            CliError::Client(
                ClientError::OutcomeUnknown { .. } | ClientError::PartlyApplied { .. }
            ) | CliError::Keyed(ClientError::OutcomeUnknown { .. }, _)
        )
    }

    /// Whether the server refused the request's idempotency key as used by other
    /// operations: repeating the command under it can never succeed.
    fn key_reused(&self) -> bool {
        matches!(
            self,
            CliError::Keyed(ClientError::Server { code, .. }, _)
                if *code == tally_protocol::ErrorCode::IdempotencyKeyReused
        )
    }

    /// The idempotency key of the request that failed, if it had one.
    pub(crate) fn idempotency_key(&self) -> Option<u128> {
        match self {
            CliError::Keyed(_, key) => Some(*key),
            _ => None,
        }
    }

    /// What to do next, for a person: after an unknown outcome, how not to count twice.
    pub(crate) fn advice(&self) -> Option<String> {
        let key = self.idempotency_key();
        match (self.is_outcome_unknown(), key) {
            (true, Some(key)) => Some(format!(
                "the change may have been applied; do not simply run it again (it could \
                 count twice): run the same command with --idempotency-key {key:032x} \
                 to apply it at most once"
            )),
            (true, None) => Some(
                "the change may have been applied; do not simply run it again (it could \
                 count twice): read the value to find out"
                    .to_owned(),
            ),
            (false, Some(_)) if self.key_reused() => Some(
                "nothing was applied; that idempotency key belongs to other operations: run \
                 the command again without --idempotency-key (or with a new key)"
                    .to_owned(),
            ),
            (false, Some(key)) => Some(format!(
                "nothing was applied; to try again, run the same command (with \
                 --idempotency-key {key:032x} it is applied at most once)"
            )),
            (false, None) => None,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Client(error) | CliError::Keyed(error, _) => write!(formatter, "{error}"),
            CliError::Input(message) => write!(formatter, "{message}"),
            CliError::BadLines(parsed) => {
                let count = parsed.bad_line_count;
                write!(formatter, "{count} bad line(s), nothing was applied")
            }
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`tally batch | head`).
pub(crate) fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}
