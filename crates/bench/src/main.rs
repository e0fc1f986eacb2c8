//! `herald-bench`: the benchmark commands as a stand-alone binary (the same as
//! `herald bench …`). The server under test is the `herald` binary next to it.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "herald load generator and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: herald_bench::Cmd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let exe = std::env::current_exe()?;
    let herald = exe
        .parent()
        .map(|d| d.join("herald"))
        .unwrap_or_else(|| "herald".into());
    herald_bench::run(
        cli.command,
        herald_bench::Invocation {
            self_prefix: Vec::new(),
            herald: (herald, vec!["standalone".into()]),
        },
    )
}
