//! `tally-bench`: Tally's benchmarks and load generator, one subcommand per subject.
//!
//! Each subcommand lives in its own module (`engine.rs`, ...) exposing an `Args` struct
//! (clap `Args`) and a `run` function; this file only dispatches. Adding a subcommand is
//! a `mod` line, a variant of [`Command`] and an arm in `main`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` for reports: a reader that stops reading (`tally-bench ... | head`) ends the
/// process quietly instead of panicking on the broken pipe.
macro_rules! out {
    ($($argument:tt)*) => {
        $crate::write_stdout_line(format_args!($($argument)*))
    };
}

mod cleanup;
mod compare;
mod engine;
mod journal;
mod latency;
mod plot;
mod recovery;
mod server;
mod workload;

#[derive(Parser, Debug)]
#[command(
    name = "tally-bench",
    version,
    about = "Benchmarks and load generation for Tally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The counter engine in-process on one pinned core: load, then increments, beside
    /// the raw floor of random cache-line read-modify-writes over the same bytes.
    Engine(engine::EngineArgs),
    /// A running server over the network (native protocol or RESP): increments per
    /// second and latency percentiles, closed or open loop.
    Server(server::ServerArgs),
    /// Redis and Tally side by side on 127.0.0.1: starts each (data under
    /// --scratch-dir, default $TMPDIR), fills it, drives each with the same workloads,
    /// runs redis-benchmark too, prints what was compared, absolute figures and ratios.
    Compare(compare::CompareArgs),
    /// Restart time after an unclean stop: checkpoint restore plus journal replay.
    Recovery(recovery::RecoveryArgs),
    /// Group commit in-process on the real disk: durable increments per second and
    /// acknowledgement latency by waiters, commit wait and batch size; relaxed cost.
    Journal(journal::JournalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Engine(args) => engine::run(&args),
        Command::Server(args) => server::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Recovery(args) => recovery::run(&args),
        Command::Journal(args) => journal::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one line to stdout. A closed pipe means nobody reads the rest: exit at once
/// with success, as `yes | head` does, rather than panic as `println!` would.
pub(crate) fn write_stdout_line(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("tally-bench: writing to stdout: {error}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Command {
        let all = std::iter::once("tally-bench").chain(arguments.iter().copied());
        Cli::try_parse_from(all)
            .expect("the arguments parse")
            .command
    }

    #[test]
    fn compare_passes_repeated_tallyd_arguments_through_in_order() {
        let Command::Compare(args) = parse(&[
            "compare",
            "--redis-server",
            "/usr/bin/redis-server",
            "--tallyd-arg=--spin-us=200",
            "--tallyd-arg",
            "--cores",
            "--tallyd-arg=1",
        ]) else {
            panic!("not the compare subcommand");
        };
        assert_eq!(args.tallyd_args, ["--spin-us=200", "--cores", "1"]);
    }

    #[test]
    fn compare_help_gives_the_limit_of_tallyd_arguments_as_a_number() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let compare = cli.find_subcommand_mut("compare").expect("compare");
        let help = compare.render_long_help().to_string();
        assert!(!help.contains("TALLYD_ARGS_MAX"), "{help}");
        let limit = format!("At most {}", compare::TALLYD_ARGS_MAX);
        assert!(help.contains(&limit), "{help}");
    }

    #[test]
    fn via_client_is_native_and_closed_loop_only() {
        let Command::Server(args) = parse(&["server", "--via-client", "--pipeline", "8"]) else {
            panic!("not the server subcommand");
        };
        assert!(args.via_client);
        assert!(server::validate(&args).is_ok());
        for extra in [["--protocol", "resp"], ["--rate", "1000"]] {
            let mut arguments = vec!["server", "--via-client"];
            arguments.extend(extra);
            let Command::Server(args) = parse(&arguments) else {
                panic!("not the server subcommand");
            };
            assert!(server::validate(&args).is_err(), "{extra:?} accepted");
        }
    }

    #[test]
    fn resp_runs_refuse_a_durability_they_cannot_ask_for() {
        let Command::Server(args) = parse(&["server", "--protocol", "resp"]) else {
            panic!("not the server subcommand");
        };
        assert!(server::validate(&args).is_ok());
        for durability in ["relaxed", "durable"] {
            let Command::Server(args) =
                parse(&["server", "--protocol", "resp", "--durability", durability])
            else {
                panic!("not the server subcommand");
            };
            let error = server::validate(&args).expect_err(durability).to_string();
            assert!(error.contains("--durability"), "{error}");
            let Command::Server(args) = parse(&["server", "--durability", durability]) else {
                panic!("not the server subcommand");
            };
            assert!(server::validate(&args).is_ok(), "native {durability}");
        }
    }

    #[test]
    fn ops_must_be_whole_batches_unless_the_run_is_timed() {
        let validate = |arguments: &[&str]| {
            let mut all = vec!["server"];
            all.extend(arguments);
            let Command::Server(args) = parse(&all) else {
                panic!("not the server subcommand");
            };
            server::validate(&args).map_err(|error| error.to_string())
        };
        let error = validate(&["--ops", "10", "--batch", "3"]).expect_err("10 ops in 3s");
        assert!(error.contains("--ops 9 or 12"), "{error}");
        assert!(validate(&["--ops", "9", "--batch", "3"]).is_ok());
        assert!(validate(&["--ops", "10", "--batch", "3", "--duration", "1"]).is_ok());
        let error = validate(&["--ops", "2", "--batch", "3"]).expect_err("2 ops in 3s");
        assert!(error.contains("so pass --ops 3"), "{error}");
    }
}
