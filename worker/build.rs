//! `GGML_SPINDLE_PATCHES=off` builds stock ggml (patches/ggml.cmake), which
//! lacks the repack patch's load-time switch: the worker then compiles
//! without it (cfg `stock_ggml`) and refuses to load with repacking off.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(stock_ggml)");
    println!("cargo::rerun-if-env-changed=GGML_SPINDLE_PATCHES");
    if std::env::var("GGML_SPINDLE_PATCHES").as_deref() == Ok("off") {
        println!("cargo::rustc-cfg=stock_ggml");
    }
}
