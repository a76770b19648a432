//! Does this machine need the image's `GLIBC_TUNABLES`? Measures the C library's `memcpy`
//! on 16 KiB copies (a TLS record's size) where the destination's offset within its
//! 4 KiB page is the source's, and where it is a few bytes past it.
//!
//! ```text
//! cargo run --release --example memcpy-rate
//! GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0x40000000 cargo run --release --example memcpy-rate
//! ```
//!
//! On AMD Zen 3 and later, glibc versions that copy with `rep movsb` run the second kind
//! 20 to 30 times slower (sourceware BZ 30994); the `Dockerfile` says what the variable does
//! about it.

use std::hint::black_box;
use std::time::Instant;

const SIZE: usize = 16 * 1024;
/// Bytes copied per measurement: long enough to swamp the timer, short enough for a slow
/// path to finish in about a second.
const TOTAL: usize = 2 << 30;

const PAGE: usize = 4096;

/// GB/s for copies of SIZE bytes from `src_off` to `dst_off` bytes into a page.
fn rate(src_off: usize, dst_off: usize) -> f64 {
    let src = vec![0xa5u8; SIZE + 2 * PAGE];
    let mut dst = vec![0u8; SIZE + 2 * PAGE];
    let s = src.as_ptr().align_offset(PAGE) + src_off;
    let d = dst.as_ptr().align_offset(PAGE) + dst_off;
    let start = Instant::now();
    for _ in 0..TOTAL / SIZE {
        dst[d..d + SIZE].copy_from_slice(black_box(&src[s..s + SIZE]));
        black_box(&mut dst);
    }
    TOTAL as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    println!(
        "GLIBC_TUNABLES={}",
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| "(unset)".into())
    );
    let aligned = rate(0, 0);
    println!(
        "16 KiB memcpy, {:<28} {aligned:6.1} GB/s",
        "same offset in the page"
    );
    let mut slowest = f64::INFINITY;
    for (label, src_off, dst_off) in [
        ("destination 5 bytes further", 0, 5),
        ("destination 8 bytes further", 100, 108),
        ("source 5 bytes further", 5, 0),
    ] {
        let r = rate(src_off, dst_off);
        slowest = slowest.min(r);
        println!("16 KiB memcpy, {label:<28} {r:6.1} GB/s");
    }
    if slowest < aligned / 4.0 {
        println!(
            "some copies are {:.0}x slower here: set \
             GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0x40000000, as the image does",
            aligned / slowest
        );
    } else {
        println!("all of them run at full speed here");
    }
}
