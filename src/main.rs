//! The `invited` binary: parses the command line and hands over to `cli::main`.

fn main() -> std::process::ExitCode {
    invited::cli::main()
}
