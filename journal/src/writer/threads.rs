//! The populate and preallocate helper threads.

use super::*;

/// Prefaults the active segment's pages (writable) ahead of the writer, so the append path
/// takes no page faults. Best effort: failures only cost speed.
pub(super) fn populator_main(shared: &Shared) {
    let mut populated: (u64, u64) = (0, 0); // (segment base, offset populated up to)
    loop {
        let target = {
            let guard = lock(&shared.populate_target.0);
            let (guard, _) = shared
                .populate_target
                .1
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            *guard
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let active = lock(&shared.segments).active.clone();
        if populated.0 != active.base_seq {
            populated = (active.base_seq, DATA_OFFSET);
        }
        let end = target.min(active.size_bytes) & !(PAGE_BYTES - 1);
        let steps_max = end.saturating_sub(populated.1) / POPULATE_CHUNK_BYTES + 1;
        for _ in 0..steps_max {
            if populated.1 >= end || shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let len = (end - populated.1).min(POPULATE_CHUNK_BYTES);
            // Read-populated, in both modes (see `Segment::populate`).
            if active.populate(populated.1, len).is_err() {
                populated.1 = active.size_bytes; // unsupported here: stop for this segment
                break;
            }
            populated.1 += len;
        }
    }
}

/// Gives the calling thread the lowest priority (nice 19), so that its wake-ups do not
/// preempt a busy thread sharing its core. Best effort; Linux applies nice per thread.
pub(super) fn lowest_priority() {
    // SAFETY: plain syscall on the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// How often the preallocator retries on its own after failing (a full disk).
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);

pub(super) fn preallocator_main(shared: &Shared) {
    let path = shared.dir.join(SPARE_FILE_NAME);
    // Its work (a zero fill is a segment's worth of writes) is never urgent until the
    // writer asks, and then it stops early.
    lowest_priority();
    let mut failed_at: Option<std::time::Instant> = None;
    loop {
        {
            let mut spare = lock(&shared.spare);
            // Bounded by `stop`: checked at least every 50 ms.
            while !matches!(*spare, Spare::Requested) {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                // After a failure, retry on its own every RETRY_AFTER_FAILURE, so that the
                // spare is ready soon after space returns, before an append asks.
                let retry_due = failed_at.is_some_and(|at| at.elapsed() >= RETRY_AFTER_FAILURE);
                if matches!(*spare, Spare::Failed(_)) && retry_due {
                    *spare = Spare::Requested;
                    break;
                }
                spare = shared
                    .spare_changed
                    .wait_timeout(spare, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let low = shared
            .check_space()
            .map(|free| free < shared.low_space_threshold_bytes + shared.segment_size_bytes);
        let result = match low {
            Ok(true) => Err(format!(
                "free space {} bytes is below the low-space threshold {} plus one segment {}",
                shared.free_space_bytes.load(Ordering::Relaxed),
                shared.low_space_threshold_bytes,
                shared.segment_size_bytes
            )),
            Ok(false) => prepare_spare(
                &path,
                shared.segment_size_bytes,
                shared.zero_fill,
                shared.storage.as_ref(),
                &shared.spare_wanted,
            )
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        failed_at = result.is_err().then(std::time::Instant::now);
        let mut spare = lock(&shared.spare);
        *spare = match result {
            Ok(f) => Spare::Ready(f),
            Err(reason) => Spare::Failed(reason),
        };
        shared.spare_changed.notify_all();
    }
}
