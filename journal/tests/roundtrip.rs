mod common;
use common::*;
use proptest::prelude::*;
use ringex_journal::{Durability, Journal, Reader};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random record sizes and counts across many segments, written over several sessions;
    /// everything reads back bit for bit, and random seeks land on the right record.
    #[test]
    fn round_trip(sizes in proptest::collection::vec(0usize..3000, 1..400),
                  sessions in 1usize..4,
                  seeks in proptest::collection::vec(any::<u64>(), 0..10)) {
        let dir = tempfile::tempdir().unwrap();
        let per = sizes.len().div_ceil(sessions);
        for chunk in sizes.chunks(per) {
            let mut j = Journal::open(config(dir.path(), Durability::Async { flush_interval_ms: 50 })).unwrap();
            for &len in chunk {
                let seq = j.seq_next();
                prop_assert_eq!(j.append(3, 2, seq, &payload(seq, len)).unwrap(), seq);
            }
            j.close().unwrap();
        }
        let mut r = Reader::open(dir.path()).unwrap();
        for (i, &len) in sizes.iter().enumerate() {
            let rec = r.next_owned().unwrap().expect("record");
            let seq = i as u64 + 1;
            prop_assert_eq!(rec.seq, seq);
            prop_assert_eq!(rec.timestamp_ns, seq);
            prop_assert_eq!(rec.record_type, 3);
            prop_assert_eq!(rec.schema_version, 2);
            prop_assert_eq!(rec.payload, payload(seq, len));
        }
        prop_assert!(r.next_owned().unwrap().is_none());
        for s in seeks {
            let seq = s % sizes.len() as u64 + 1;
            r.seek(seq).unwrap();
            prop_assert_eq!(r.next_owned().unwrap().unwrap().seq, seq);
        }
    }
}
