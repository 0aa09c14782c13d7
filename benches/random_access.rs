//! What one random cache line costs the engine at a given amount of state, on this machine:
//! the question behind the engine bench's 1 M / 10 k ratio (issue 2). A loop does about as
//! much dependent work per step as the engine does per event between two state accesses, then
//! reads one random 8-byte word of a table of the given size, loaded 8 steps ahead (as the
//! engine prefetches) or not. Printed: the extra nanoseconds per access over the same loop on
//! a table that fits in the cache. The tables are allocated like the engine's state (the
//! global allocator, 2 MiB pages where the OS gives them).
//!
//! Run: `cargo bench --bench random_access` (sizes in MiB: `TOUCHSTREAM_BENCH_MIB=128,1024`).

use std::hint::black_box;
use std::time::Instant;

/// Steps timed per size and mode.
const STEPS: usize = 1_000_000;
/// Steps ahead that an access is loaded, as the engine's `DECODE_AHEAD` and `TIMER_AHEAD`.
const AHEAD: usize = 8;
/// Dependent multiply-adds per step: about 200 ns here, a tenth of an event at 10 k pairs.
const WORK: u64 = 200;

/// ns per step: `WORK` dependent steps, then a read of `table[ix[i]]` (loaded `AHEAD` steps
/// before when `prefetch`).
fn run(table: &[u64], ix: &[usize], prefetch: bool) -> f64 {
    let mut acc = 1u64;
    let mut sum = 0u64;
    let t0 = Instant::now();
    for i in 0..ix.len() {
        if prefetch && let Some(&next) = ix.get(i + AHEAD) {
            touchstream::prefetch(&table[next]);
        }
        for k in 0..WORK {
            acc = black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(k));
        }
        sum = sum.wrapping_add(table[ix[i]]);
    }
    let ns = t0.elapsed().as_nanos() as f64 / ix.len() as f64;
    black_box((acc, sum));
    ns
}

/// How much of the process is in 2 MiB pages (Linux).
fn huge_pages() -> Option<String> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{} MiB", kib >> 10))
}

fn indices(len: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    (0..STEPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % len as u64) as usize
        })
        .collect()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("TOUCHSTREAM_BENCH_MIB")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![128, 512, 1024, 1536, 2560]);
    // The baseline: a table well inside the cache.
    let small: Vec<u64> = (0..(256 << 10) / 8).collect();
    let small_ix = indices(small.len(), 7);
    let base = run(&small, &small_ix, true);
    println!(
        "random_access  ({WORK} dependent steps between accesses: {base:.0} ns/step on a 256 KiB table)"
    );
    println!(
        "  extra ns per access:       table  loaded {AHEAD} ahead  not loaded  (process in 2 MiB pages)"
    );
    for mib in sizes {
        let table: Vec<u64> = (0..(mib << 20) / 8).map(|i| i as u64).collect();
        let ix = indices(table.len(), 11);
        let ahead = run(&table, &ix, true) - base;
        let cold = run(&table, &ix, false) - base;
        println!(
            "  {mib:>26} MiB  {ahead:>14.0}  {cold:>10.0}  ({})",
            huge_pages().unwrap_or_else(|| "?".into())
        );
    }
}
