//! The `invited` binary: parses the command line and hands over to `cli::main`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    invited::cli::main()
}
