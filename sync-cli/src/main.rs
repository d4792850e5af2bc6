//! The `rdist` binary; everything lives in the library so tests can reach it.

/// jemalloc, with one arena (`src/malloc_conf.c`; see DESIGN.md, "Allocator").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    rdist::main()
}
