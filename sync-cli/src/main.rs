//! The `rdist` binary; everything lives in the library so tests can reach it.

/// jemalloc, configured with one arena in `.cargo/config.toml` (see DESIGN.md, "Allocator").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    rdist::main()
}
