/* jemalloc's options for the `rdist` binary on Linux (see DESIGN.md, "Allocator"), read at its
 * first allocation. Compiled into the binary so they hold however it is built: a build started
 * outside the repository, or `cargo install rdist` from the registry, sees no
 * `.cargo/config.toml`. In C because the workspace forbids unsafe Rust, and exporting a symbol
 * is unsafe. tikv-jemalloc-sys prefixes jemalloc's symbols with `_rjem_` on Linux; jemalloc's
 * own definition of this one is weak, so this one wins. */
const char *_rjem_malloc_conf = "narenas:1";
