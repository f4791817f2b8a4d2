//! `spindle bench` in a build without the `bench` feature: the subcommand
//! stays visible and says how to get the benchmarks, instead of clap's
//! "unrecognized subcommand".

/// Whatever a bench scenario was given; nothing runs in this build.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The scenario and its flags (this build has none: see above).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this spindle was built without benchmarks: rebuild with \
         `cargo build --release --features bench` \
         (or run `cargo run --release --features bench -- bench …`)"
    )
}
