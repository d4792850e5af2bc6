//! Links jemalloc's options (`src/malloc_conf.c`) into the `rdist` binary on Linux.

fn main() {
    println!("cargo:rerun-if-changed=src/malloc_conf.c");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    // An object on the link line is always linked (a static library's member would be left
    // out: nothing refers to the symbol, jemalloc defines it itself, weakly).
    for obj in cc::Build::new()
        .file("src/malloc_conf.c")
        .compile_intermediates()
    {
        println!("cargo:rustc-link-arg-bins={}", obj.display());
    }
}
