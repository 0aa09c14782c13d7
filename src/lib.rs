//! touchstream: real-time sales-behaviour telemetry.
//!
//! A tour, in the direction the data flows:
//! - [`event`]: the input contract (EVENTS.md): kinds, strict decoding, time forms.
//! - [`config`]: the pipeline file, validated with every problem located.
//! - [`directory`]: reps, customers, regions; WeCom/DingTalk ids to pairs.
//! - [`engine`]: micro-batches through dedup, effective time, watermark and reordering into
//!   the [`operators`] (asset join, sessions, CDI aggregates), then [`rules`] (SQL over
//!   operator tables, via DataFusion), producing alerts, sessions, CDI and dead letters.
//! - [`replay`]: the engine over a file, event time only. [`live`]: the engine on NATS
//!   JetStream ([`source`], [`sinks`]), with `/metrics` ([`telemetry`]).
//! - [`collect`]: the HTTP front door (pixels, tracked links, beacons, SDK batches) that
//!   publishes events to NATS; [`consent`]: the reps' consent switches, enforced at every door.
//! - [`gen`]: a seeded workload generator for tests, benches and the demo.

/// mimalloc for every binary (touchstream, tests, benches): DataFusion allocates and frees
/// batch-sized buffers on every kernel run, which glibc's allocator answers with `brk`/`munmap`
/// and fresh page faults each time; see README "Benchmark figures".
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory for 5 minutes before it goes back to the OS (mimalloc's default is 1 s),
/// unless `MIMALLOC_PURGE_DELAY` says otherwise. Kernel runs and growing state free memory that
/// is needed again a little later; returned too soon, it comes back through page faults that
/// zero it again (often 2 MiB pages, which this project's VM backs at a few ms each). With the
/// earlier 10 s, `cargo bench --bench engine` still took hundreds to thousands of faults per size
/// (most of them the bench's: its three engines share the allocator and wait for each other for
/// longer than 10 s); with 5 minutes it takes 1 / 16 / 20, and per pair of alternating runs 3.7 /
/// 5.5 / 6.3 % less time at 10 k / 100 k / 1 M pairs (stop 25, `benches/LOG.md`). The cost: after
/// a burst the process gives its memory back minutes later instead of seconds. `main` calls it
/// first (the delay applies to memory freed after the call); `Engine::new` too, for library users.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            /// `mi_option_purge_delay` in mimalloc.h (v3), which the -sys crate does not name.
            const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
            // SAFETY: sets one integer option; mimalloc reads it at each purge decision, and
            // setting it at any time is allowed.
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 300_000) };
        }
    });
}

pub mod collect;
pub mod config;
pub mod consent;
pub mod directory;
pub mod engine;
pub mod event;
pub mod r#gen;
pub mod live;
pub mod notify;
pub mod operators;
pub mod probe;
pub mod replay;
pub mod rules;
pub mod serve;
pub mod sinks;
pub mod source;
pub mod telemetry;

/// Wall-clock milliseconds: the only read of the system clock, for the CLI and live loops.
pub fn wall_clock_ms() -> event::Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as event::Millis)
        .unwrap_or(0)
}

/// Hints the CPU to bring `x`'s cache line in: a load that cannot fault and changes nothing
/// observable, used where the engine knows a random access is coming a few events ahead.
#[inline(always)]
pub fn prefetch<T>(x: &T) {
    prefetch_addr((x as *const T).cast());
}

/// `prefetch` for every cache line that `x` spans (a value of a few lines).
#[inline(always)]
pub fn prefetch_all<T>(x: &T) {
    let start: *const u8 = (x as *const T).cast();
    let size = std::mem::size_of::<T>();
    let mut offset = 0;
    while offset < size {
        prefetch_addr(start.wrapping_add(offset));
        offset += 64;
    }
    // The last line, when `x` does not start on a line boundary.
    prefetch_addr(start.wrapping_add(size.saturating_sub(1)));
}

#[inline(always)]
fn prefetch_addr(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it reads nothing and never faults, whatever the
    // address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
