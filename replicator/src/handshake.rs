//! The handshake's decisions, without I/O: what a primary answers a standby's `Hello`, and
//! where a standby steps back to when the primary says the journals differ.
//!
//! A standby names its journal's end, `(seq_last, chain_last)`. Equal chain values at
//! equal sequences mean identical prefixes, so a match lets the primary stream from
//! `seq_last + 1`. Otherwise the standby tries again from earlier *anchors* it can read
//! cheaply (each segment's first sequence minus one, whose chain value the segment header
//! holds), down to `(0, 0)`, the empty prefix, which always matches; whatever the standby
//! held after the matching anchor goes to its quarantine and comes again from the primary.

/// What the primary knows of its own journal when a standby says hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryView {
    pub journal_id: u128,
    pub epoch: u32,
    /// Oldest record the primary still holds (after pruning); 1 when nothing was pruned.
    pub seq_first: u64,
    /// Last record written (what can be streamed).
    pub seq_written: u64,
}

/// The primary's answer to a `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The prefixes match: frames from `seq_from` follow.
    Stream { seq_from: u64 },
    /// No match at `seq`: the standby steps back to an earlier anchor.
    Diverged { seq: u64 },
    /// The standby's next record was pruned here: it installs the primary's snapshot and
    /// follows from there.
    Snapshot,
    /// Another journal: nothing to do together.
    Refuse(String),
    /// The standby is at a newer epoch: a newer primary exists, and this one must stop
    /// taking orders.
    Fenced { epoch: u32 },
}

/// Decides the answer to a standby at `epoch` whose journal `journal_id` (0: empty, not
/// created yet) ends at `(seq_last, chain_last)`. `chain_at(seq)` is the primary's chain
/// value after `seq`, for `seq_first - 1 <= seq <= seq_written` (None when it cannot
/// tell).
pub fn answer_hello(
    primary: &PrimaryView,
    epoch: u32,
    journal_id: u128,
    seq_last: u64,
    chain_last: u64,
    chain_at: impl FnOnce(u64) -> Option<u64>,
) -> Answer {
    // Another journal first: a standby of another pair says nothing about this one's
    // epochs, whatever its own, and must not fence it.
    if journal_id != 0 && journal_id != primary.journal_id {
        return Answer::Refuse(format!(
            "the standby's journal {journal_id:032x} is not this primary's {:032x}: it \
             follows another primary's journal; point its replication.primary at that \
             primary, or give it an empty data directory to follow this one",
            primary.journal_id
        ));
    }
    if epoch > primary.epoch {
        if journal_id == 0 {
            // A newer epoch is journaled by a promotion: a node without a journal has none.
            return Answer::Refuse(format!(
                "the standby claims epoch {epoch} but has no journal: refused, this \
                 primary stays at epoch {}",
                primary.epoch
            ));
        }
        return Answer::Fenced { epoch };
    }
    if seq_last > primary.seq_written {
        // The standby holds records this primary lacks (a suffix it never received from
        // a newer primary, or one an older primary lost): step back.
        return Answer::Diverged { seq: seq_last };
    }
    if seq_last + 1 < primary.seq_first {
        // Its next record was pruned here: a snapshot, and the journal after it.
        return Answer::Snapshot;
    }
    if seq_last == 0 {
        return Answer::Stream { seq_from: 1 };
    }
    match chain_at(seq_last) {
        Some(c) if c == chain_last => Answer::Stream {
            seq_from: seq_last + 1,
        },
        _ => Answer::Diverged { seq: seq_last },
    }
}

/// The standby's next anchor after the primary found no match at `rejected`: the
/// greatest anchor below it. `anchors` are `(seq, chain after seq)` pairs from the
/// standby's journal; `(0, 0)` is always an anchor (the empty prefix).
pub fn next_anchor(anchors: &[(u64, u64)], rejected: u64) -> (u64, u64) {
    anchors
        .iter()
        .copied()
        .filter(|&(seq, _)| seq < rejected)
        .max_by_key(|&(seq, _)| seq)
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PrimaryView = PrimaryView {
        journal_id: 7,
        epoch: 2,
        seq_first: 1,
        seq_written: 100,
    };

    fn chain(seq: u64) -> Option<u64> {
        Some(seq * 31 + 5)
    }

    #[test]
    fn a_matching_prefix_streams_from_the_next_record() {
        assert_eq!(
            answer_hello(&P, 2, 7, 40, chain(40).unwrap(), chain),
            Answer::Stream { seq_from: 41 }
        );
        assert_eq!(
            answer_hello(&P, 1, 0, 0, 0, chain),
            Answer::Stream { seq_from: 1 }
        );
        // Up to date.
        assert_eq!(
            answer_hello(&P, 2, 7, 100, chain(100).unwrap(), chain),
            Answer::Stream { seq_from: 101 }
        );
    }

    #[test]
    fn a_different_or_longer_journal_steps_back() {
        assert_eq!(
            answer_hello(&P, 2, 7, 40, 999, chain),
            Answer::Diverged { seq: 40 }
        );
        assert_eq!(
            answer_hello(&P, 2, 7, 150, 1, chain),
            Answer::Diverged { seq: 150 }
        );
        let anchors = [(0, 0), (30, 1), (60, 2), (150, 3)];
        assert_eq!(next_anchor(&anchors, 150), (60, 2));
        assert_eq!(next_anchor(&anchors, 60), (30, 1));
        assert_eq!(next_anchor(&anchors, 30), (0, 0));
        assert_eq!(next_anchor(&[], 30), (0, 0));
    }

    #[test]
    fn a_newer_epoch_fences_the_primary_and_another_journal_is_refused() {
        assert_eq!(
            answer_hello(&P, 3, 7, 10, 0, chain),
            Answer::Fenced { epoch: 3 }
        );
        assert!(matches!(
            answer_hello(&P, 2, 8, 10, 0, chain),
            Answer::Refuse(_)
        ));
    }

    #[test]
    fn a_newer_epoch_of_another_journal_or_of_none_is_refused_not_fenced() {
        assert!(matches!(
            answer_hello(&P, 3, 8, 10, 0, chain),
            Answer::Refuse(_)
        ));
        assert!(matches!(
            answer_hello(&P, u32::MAX, 0, 0, 0, chain),
            Answer::Refuse(_)
        ));
    }

    #[test]
    fn a_standby_behind_the_pruned_records_gets_the_snapshot() {
        let p = PrimaryView { seq_first: 51, ..P };
        assert_eq!(answer_hello(&p, 2, 7, 0, 0, chain), Answer::Snapshot);
        assert_eq!(answer_hello(&p, 2, 7, 49, 0, chain), Answer::Snapshot);
        assert_eq!(
            answer_hello(&p, 2, 7, 50, chain(50).unwrap(), chain),
            Answer::Stream { seq_from: 51 }
        );
    }
}
