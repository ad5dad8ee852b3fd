//! Requests sent but not yet known to be processed, kept for resending after a resume.

use std::collections::VecDeque;

use ringex_gateway::protocol::ClientMessage;

/// A bounded FIFO of sent requests in increasing request id order.
///
/// The server processes a session's requests in order, so an answer to request `r`
/// proves every request up to `r` was processed: [`Outbox::answered`] drops them all.
/// After a resume, [`Outbox::unprocessed`] lists what to resend: the requests above
/// `LoginAccepted.last_request_id`.
#[derive(Debug)]
pub struct Outbox {
    items: VecDeque<(u64, ClientMessage)>,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Records a request as sent. The caller checks [`Outbox::is_full`] first; ids must
    /// increase (a retransmission is not pushed again).
    pub fn push(&mut self, request_id: u64, msg: ClientMessage) {
        debug_assert!(self.items.back().is_none_or(|(id, _)| *id < request_id));
        debug_assert!(!self.is_full());
        self.items.push_back((request_id, msg));
    }

    /// An answer to `request_id` arrived: it and every earlier request were processed.
    pub fn answered(&mut self, request_id: u64) {
        while self.items.front().is_some_and(|(id, _)| *id <= request_id) {
            self.items.pop_front();
        }
    }

    /// The server says it processed everything up to `last_request_id`: forget those and
    /// return the rest, in order, to resend with their original ids.
    pub fn unprocessed(&mut self, last_request_id: u64) -> Vec<ClientMessage> {
        self.answered(last_request_id);
        self.items.iter().map(|(_, m)| *m).collect()
    }

    /// The oldest request not known to be processed.
    pub fn oldest(&self) -> Option<u64> {
        self.items.front().map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringex_gateway::protocol::BalanceQuery;

    fn q(id: u64) -> ClientMessage {
        ClientMessage::BalanceQuery(BalanceQuery { request_id: id })
    }

    #[test]
    fn answers_prune_everything_up_to_them() {
        let mut o = Outbox::new(10);
        for id in [1, 2, 5, 7, 9] {
            o.push(id, q(id));
        }
        o.answered(4);
        assert_eq!(o.oldest(), Some(5));
        assert_eq!(o.len(), 3);
        o.answered(5);
        assert_eq!(o.oldest(), Some(7));
        o.answered(100);
        assert!(o.is_empty());
    }

    #[test]
    fn resume_resends_exactly_what_is_above_last_request_id() {
        let mut o = Outbox::new(10);
        for id in 1..=6 {
            o.push(id, q(id));
        }
        o.answered(2);
        let again = o.unprocessed(4);
        let ids: Vec<u64> = again.iter().map(|m| m.request_id().unwrap()).collect();
        assert_eq!(ids, vec![5, 6]);
        // They stay in the outbox until answered: a second disconnect resends them again.
        assert_eq!(o.len(), 2);
        let ids: Vec<u64> = o
            .unprocessed(0)
            .iter()
            .map(|m| m.request_id().unwrap())
            .collect();
        assert_eq!(ids, vec![5, 6]);
    }

    #[test]
    fn bounded() {
        let mut o = Outbox::new(3);
        for id in 1..=3 {
            assert!(!o.is_full());
            o.push(id, q(id));
        }
        assert!(o.is_full());
        o.answered(1);
        assert!(!o.is_full());
    }
}
