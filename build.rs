//! Release builds: the functions a typical agent runs are linked first and next to each other,
//! and the binary is stripped.
//!
//! The kernel maps an executable's code in 64 KiB windows around each page fault, so an
//! agent's resident memory follows how many windows its running code touches: spread over the
//! binary, the 2.4 MiB of code a typical agent runs mapped 5.5 MiB of its 7 MiB of `.text`.
//! `build/hot-functions.txt` (written by `scripts/orderfile`) lists those functions, and LLD's
//! `--symbol-ordering-file` puts them at the front. The list only moves code: a stale entry is
//! skipped and a missing one costs memory, never correctness. Only where the linker is LLD
//! (Rust 1.90 and later link `x86_64-unknown-linux-gnu` with their own LLD unless told
//! otherwise); `ZKRENDER_ORDER_FILE=0` turns it off.
//!
//! Stripping is here, not in Cargo.toml's `strip`, because Cargo mixes `strip` into every
//! symbol's hash: scripts/orderfile needs a build with symbols (`ZKRENDER_STRIP=0`) whose
//! function names are the shipped binary's.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=ZKRENDER_ORDER_FILE");
    println!("cargo:rerun-if-env-changed=ZKRENDER_STRIP");
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("PROFILE") != "release" || var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    if var("ZKRENDER_STRIP") != "0" {
        println!("cargo:rustc-link-arg-bin=zkrender=-Wl,--strip-all");
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("build/hot-functions.txt");
    if var("ZKRENDER_ORDER_FILE") == "0"
        || !list.is_file()
        || !links_with_rust_lld(&var("TARGET"), &var("CARGO_ENCODED_RUSTFLAGS"))
    {
        return;
    }
    let list = list.display();
    println!("cargo:rustc-link-arg-bin=zkrender=-Wl,--symbol-ordering-file={list}");
    println!("cargo:rustc-link-arg-bin=zkrender=-Wl,--no-warn-symbol-ordering");
    // Where each function landed, for `scripts/orderfile --check-map` (CI): a list that no
    // longer names the binary's functions would otherwise cost memory without a sound.
    let map = Path::new(&var("OUT_DIR")).join("zkrender.map");
    println!("cargo:rustc-link-arg-bin=zkrender=-Wl,-Map={}", map.display());
}

/// Whether rustc links this target with its bundled LLD: x86_64 Linux (GNU) from Rust 1.90,
/// unless the flags choose a linker or turn the bundled one off.
fn links_with_rust_lld(target: &str, rustflags: &str) -> bool {
    if target != "x86_64-unknown-linux-gnu" {
        return false;
    }
    let chooses_linker = ["linker", "link-self-contained", "fuse-ld"];
    if rustflags.split('\x1f').any(|f| chooses_linker.iter().any(|c| f.contains(c))) {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version.split_whitespace().nth(1).unwrap_or("").split('.');
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    (next(), next()) >= (1, 90)
}
