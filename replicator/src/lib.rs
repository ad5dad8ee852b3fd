//! ringex-replicator: primary -> standby streaming of the input journal.
//!
//! Not built yet: this crate is an empty placeholder in the workspace layout of
//! `DESIGN.md` §2. It exports nothing, so nothing can mistake it for working code.
