//! Readiness interest of a connection's socket, shared by the event loops.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// Registers `stream` for writability while it has bytes `pending`, and for readability
/// only once they are gone; `registered` remembers which, so an unchanged state costs no
/// system call.
pub fn set_writable(
    registry: &Registry,
    stream: &mut TcpStream,
    token: Token,
    pending: bool,
    registered: &mut bool,
) {
    if pending == *registered {
        return;
    }
    let interest = if pending {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    let _ = registry.reregister(stream, token, interest);
    *registered = pending;
}
