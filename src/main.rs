//! The `distraft` binary: with no subcommand it starts a node (as `python server.py`
//! did), configured by the original DISTRAFT_* variables or the matching flags; the
//! subcommands are clients (see `distraft --help`).

use std::process::ExitCode;

use clap::Parser;
use distraft::cli::{self, Command};
use distraft::config::{Config, LogFormat, NodeArgs};
use distraft::lifecycle;

#[derive(Parser)]
#[command(
    name = "distraft",
    version,
    about = "A Raft-replicated key-value store"
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (result, node) = match cli.command {
        Some(command) => (runtime.block_on(cli::run(command)), false),
        None => {
            let config = match Config::from_args(&cli.node) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            (runtime.block_on(lifecycle::run_node(config)), true)
        }
    };
    // Leftover background work (peer links, idle connections) must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // One line that says what failed and why (a node's log goes to stderr too).
        Err(err) if node => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at DISTRAFT_LOG_LEVEL; DISTRAFT_WEB_SERVER_DEBUG adds the gateway's
/// and the HTTP stack's debug logs.
fn init_logging(config: &Config) {
    let mut filter = config.log_filter.clone();
    if config.web_server_debug {
        filter.push_str(",distraft::gateway=debug,warp=debug");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields at the top level (not under "fields"), as log collectors expect.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its definitions (e.g. two arguments with one name) only when a
    /// command is parsed: check every subcommand here, not in front of a user.
    #[test]
    fn command_line_definitions_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
