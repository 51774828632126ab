//! The `prh` command: parses arguments and dispatches to one module per command.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
