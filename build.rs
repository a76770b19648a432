//! Build script: packs the release binary's relocations (`-z pack-relative-relocs`,
//! DT_RELR). The position-independent binary's ~400 KB of relative relocations, all read
//! (and their pages dirtied) at start-up, shrink to a few KB. The dynamic loader (or the
//! static binary's own start-up code) must know DT_RELR: glibc 2.36 or later.
//!
//! It applies to release builds of the binary on x86_64 Linux with glibc, where rustc
//! 1.90 and later link with LLD. `KUBE_AMBASSADOR_LINK_TUNING=0` turns it off (for a
//! linker chosen by other means).
//!
//! The binary used to be linked with a symbol-ordering file as well (LLD
//! `--symbol-ordering-file`, the functions callgrind saw run, placed together). Measured
//! on the dynamic release binary (bench/results.md, "Link layout"): a freshly generated
//! list took idle RSS from 8.3 to 5.6 MiB, all of it file-backed code pages (RssFile 7.3
//! -> 4.6 MiB; RssAnon 1.0 MiB either way), but the committed list had gone stale (fat LTO
//! renames local functions whenever code changes; 46% of its names were gone) and saved
//! 0.3 MiB. Keeping it fresh took a 6-minute callgrind run after every change; the pages
//! it saves are clean page cache that copies of the binary on a node share and the
//! kernel can drop under pressure. So it went.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KUBE_AMBASSADOR_LINK_TUNING");
    if var("PROFILE") != "release" || !lld_on_x86_64_glibc() {
        return;
    }
    if glibc_minor().is_some_and(|minor| minor >= 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

fn var(key: &str) -> String {
    env::var(key).unwrap_or_default()
}

/// Whether the binary is linked by LLD for x86_64 Linux with glibc, and tuning not off.
fn lld_on_x86_64_glibc() -> bool {
    if var("KUBE_AMBASSADOR_LINK_TUNING") == "0" || var("TARGET") != "x86_64-unknown-linux-gnu" {
        return false;
    }
    // A linker chosen by flags may not be LLD.
    if var("CARGO_ENCODED_RUSTFLAGS").contains("linker") {
        return false;
    }
    // rustc made LLD the default linker for this target in 1.90.
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    minor_version(&output(&rustc, &["--version"]), "rustc ", "1").is_some_and(|minor| minor >= 90)
}

/// The minor version of the glibc being linked against (the build machine's: this
/// script only tunes builds for the machine's own architecture).
fn glibc_minor() -> Option<u32> {
    minor_version(&output("getconf", &["GNU_LIBC_VERSION"]), "glibc ", "2")
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .unwrap_or_default()
}

/// The minor version in "<prefix><major>.<minor>…": "rustc 1.95.0 (…)", "glibc 2.36".
fn minor_version(text: &str, prefix: &str, major: &str) -> Option<u32> {
    let rest = text.trim().strip_prefix(prefix)?.strip_prefix(major)?;
    let digits: String = rest
        .strip_prefix('.')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
