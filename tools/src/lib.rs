//! ringex-tools: journal inspection, the load generator and the Rust client library.
//!
//! Not built yet: this crate is an empty placeholder in the workspace layout of
//! `DESIGN.md` §2. It exports nothing, so nothing can mistake it for working code.
