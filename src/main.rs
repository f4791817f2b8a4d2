//! `spindle`: one binary for every role.
//!
//! - `spindle serve`: router + in-process worker + memory store on one port
//!   (the single-node default);
//! - `spindle router`: the public API in front of remote workers;
//! - `spindle worker`: one engine behind its HTTP API;
//! - `spindle download`: fetch a model into the cache (an init container's job);
//! - `spindle bench`: drive a running server and report throughput and latency
//!   (only in builds with `--features bench`; otherwise it says so).
//!
//! `--check` parses and validates a command's flags and exits: charts and
//! compose files are tested with it, so they cannot drift from the binary.

// Benchmarks ship only with `--features bench`; unit tests always build them.
#[cfg(any(test, feature = "bench"))]
mod bench;
#[cfg(not(any(test, feature = "bench")))]
#[path = "bench_missing.rs"]
mod bench;
mod inprocess;
mod listen;
mod secrets;
mod server;

use clap::{Parser, Subcommand};

// glibc malloc's arena locks showed up as ~10% of the router's CPU under
// load (many small JSON/SSE allocations across threads); mimalloc avoids them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "spindle",
    version,
    about = "OpenAI-compatible LLM serving: router, worker, single node"
)]
struct Cli {
    /// Parse and validate the flags (and environment), print "ok" and exit
    /// without loading models or binding ports.
    #[arg(long, global = true)]
    check: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run router, worker and an in-memory store in one process (single node).
    Serve(server::ServeArgs),
    /// Run the router: the public API in front of remote workers.
    Router(server::RouterArgs),
    /// Run a worker: the model engine behind its HTTP API.
    Worker(server::WorkerArgs),
    /// Fetch a model into $SPINDLE_CACHE_DIR (default model, hf:…, or check a path) and print its path.
    Download(server::DownloadArgs),
    /// Benchmark a running server (or run the side-by-side scenarios); needs a
    /// build with `--features bench`.
    Bench(bench::BenchArgs),
}

/// `--check`: what can be known about the flags without doing anything.
fn check(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => args.validate(),
        Command::Router(args) => args.validate(),
        Command::Worker(args) => {
            args.worker.validate()?;
            args.token.token().map(drop)
        }
        Command::Download(_) | Command::Bench(_) => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return match check(&cli.command) {
            Ok(()) => {
                println!("ok");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,llama-cpp-2=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => server::serve(args).await,
            Command::Router(args) => server::router(args).await,
            Command::Worker(args) => server::worker(args).await,
            Command::Download(args) => server::download(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // Do not wait for blocked tasks (streams cut at the drain deadline).
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
