//! `tally-bench`: Tally's benchmarks and load generator, one subcommand per subject.
//!
//! Each subcommand lives in its own module (`engine.rs`, ...) exposing an `Args` struct
//! (clap `Args`) and a `run` function; this file only dispatches. Adding a subcommand is
//! a `mod` line, a variant of [`Command`] and an arm in `main`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod engine;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Engine(args) => engine::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
