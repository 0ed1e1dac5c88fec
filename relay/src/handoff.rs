//! What a session and its maintainer tell each other: how the session
//! ended, and when the next session should start while this one drains.

use tokio::sync::oneshot;

use crate::connect::Established;

/// How a session ended.
pub(crate) enum Ended {
    /// Reconnect (after backoff). `quic_silent`: a QUIC session stopped
    /// hearing from the gateway, so UDP is probably blocked now.
    Lost {
        quic_silent: bool,
    },
    Shutdown,
}

/// What a running session asks of its maintainer: start the next session
/// now, while this one goes on until its streams are done.
pub(crate) enum Next {
    /// This session established the one to take over (boxed: a whole
    /// established session, next to a unit variant).
    TakeOver(Box<TakeOver>),
    /// The gateway is draining this session: connect again.
    Reconnect,
}

/// A session established to take over from a running one.
/// `routes_in_place` fires once the gateway acknowledged its routes: only
/// then may the old session stop taking requests, or the gateway would
/// have no route for them in between.
pub(crate) struct TakeOver {
    pub est: Established,
    pub routes_in_place: oneshot::Sender<()>,
}
