//! Links the kernel with the workspace's `linker.ld` and sets `cfg(kernel)` when building for the
//! bare-metal target, so the same crate also builds (protocol logic only) for host unit tests.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kernel)");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "none" {
        return;
    }
    println!("cargo::rustc-cfg=kernel");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&manifest_dir).join("../linker.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    println!("cargo::rustc-link-arg-bins=-T{}", script.display());
    // The PVH entry is 32-bit code at a fixed physical address: no PIE, no dynamic linking.
    println!("cargo::rustc-link-arg-bins=--no-dynamic-linker");
    println!("cargo::rustc-link-arg-bins=-zmax-page-size=0x1000");
}
