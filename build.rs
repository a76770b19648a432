//! Build script: links the release binary so that less of it has to be in memory.
//!
//! A sidecar's idle memory is mostly its own code, and the kernel maps a binary's pages
//! in blocks of 64 KiB or more around each page fault. The ~1.6 MB of functions that
//! start-up and the request path execute were scattered over 5.4 MB of `.text`, so almost
//! all of it became resident. Two linker options fix that:
//!
//! - `--symbol-ordering-file`: `link/hot-symbols.txt` (written by `link/update.sh` from
//!   callgrind runs) lists the functions executed; LLD places them first and contiguous.
//!   The names carry hashes that depend on the build's settings, so the static build of
//!   the image (`+crt-static`, an explicit `--target`) has its own list,
//!   `hot-symbols-static.txt`. A stale list costs memory, never correctness: names the
//!   linker does not find are skipped. Any code change can make it stale (fat LTO
//!   renumbers some local names), so `link/update.sh` runs after each one.
//! - `-z pack-relative-relocs` (DT_RELR): the position-independent binary's 400 KB of
//!   relative relocations, all read at start-up, shrink to a few KB. The dynamic loader
//!   (or the static binary's own start-up code) must know DT_RELR: glibc 2.36 or later.
//!
//! Both apply to release builds of the binary on x86_64 Linux with glibc, where rustc
//! 1.90 and later link with LLD. `KUBE_AMBASSADOR_LINK_TUNING=0` turns them off (for a
//! linker chosen by other means).
//!
//! The release profile does not strip, because a profile differing only in `strip` would
//! hash every symbol differently from the build `link/update.sh` profiles. The linker
//! strips instead (`--strip-all`, on Linux) unless `KUBE_AMBASSADOR_KEEP_SYMBOLS=1`.

use std::env;
use std::path::Path;
use std::process::Command;

/// The lists, relative to the manifest: for the ordinary build and the static one.
const LIST: &str = "link/hot-symbols.txt";
const LIST_STATIC: &str = "link/hot-symbols-static.txt";

fn main() {
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-changed={LIST_STATIC}");
    println!("cargo:rerun-if-env-changed=KUBE_AMBASSADOR_LINK_TUNING");
    println!("cargo:rerun-if-env-changed=KUBE_AMBASSADOR_KEEP_SYMBOLS");
    if var("PROFILE") != "release" {
        return;
    }
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("KUBE_AMBASSADOR_KEEP_SYMBOLS") != "1" {
        println!("cargo:rustc-link-arg-bins=-Wl,--strip-all");
    }
    if !lld_on_x86_64_glibc() {
        return;
    }
    let is_static = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    let list =
        Path::new(&var("CARGO_MANIFEST_DIR")).join(if is_static { LIST_STATIC } else { LIST });
    if list.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
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
