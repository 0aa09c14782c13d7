//! Linear probing, shared by the open-addressing tables of the hot path (the dedup set, the
//! per-pair state, the directory's id index): where a key's probe starts, and how a removal
//! closes the gap it leaves so that every later probe still finds its key.

/// Home slot of `hash` in a table of `len` slots (a power of two, at least 2): the high bits of
/// a Fibonacci hash, so that keys differing only in their low bits spread over the table.
pub fn fibonacci_slot(hash: u64, len: usize) -> usize {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - len.trailing_zeros())) as usize
}

/// Backward-shift deletion: `hole` was just emptied. A later entry of the run moves into the
/// hole unless its home slot lies after the hole (cyclically), where a probe for it would not
/// pass the hole. `home` gives an entry's home slot, None for a free slot. `slots.len()` is a
/// power of two.
pub fn close_gap<T>(slots: &mut [T], mut hole: usize, home: impl Fn(&T) -> Option<usize>) {
    let mask = slots.len() - 1;
    let mut j = hole;
    loop {
        j = (j + 1) & mask;
        let Some(h) = home(&slots[j]) else {
            break;
        };
        if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(hole) & mask) {
            slots.swap(hole, j);
            hole = j;
        }
    }
}
