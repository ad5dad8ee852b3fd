//! ringex-gateway: the mio event loop, the binary protocol codec, the WebSocket bridge
//! and HTTP.
//!
//! Not built yet: this crate is an empty placeholder in the workspace layout of
//! `DESIGN.md` §2. It exports nothing, so nothing can mistake it for working code.

pub mod protocol;
