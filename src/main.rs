//! The `invited` binary: parses the command line and hands over to `cli::main`.

// `--features system-alloc` builds with the C library's allocator instead, for heap profilers
// (heaptrack, valgrind) that see malloc but not the statically linked mimalloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    invited::cli::main()
}
