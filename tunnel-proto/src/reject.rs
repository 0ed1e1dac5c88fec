//! Why a gateway refuses a relay: the codes of a `Reject` frame.

/// Why a gateway refused a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectCode {
    UnknownKey,
    HostnameNotAllowed,
    HostnameTaken,
    BadProof,
    UnsupportedVersion,
    Malformed,
    Timeout,
    Draining,
    Internal,
    TooManySessions,
    Other(u16),
}

impl RejectCode {
    pub(crate) fn to_u16(self) -> u16 {
        match self {
            RejectCode::UnknownKey => 1,
            RejectCode::HostnameNotAllowed => 2,
            RejectCode::HostnameTaken => 3,
            RejectCode::BadProof => 4,
            RejectCode::UnsupportedVersion => 5,
            RejectCode::Malformed => 6,
            RejectCode::Timeout => 7,
            RejectCode::Draining => 8,
            RejectCode::Internal => 9,
            RejectCode::TooManySessions => 10,
            RejectCode::Other(c) => c,
        }
    }
    pub(crate) fn from_u16(c: u16) -> Self {
        match c {
            1 => RejectCode::UnknownKey,
            2 => RejectCode::HostnameNotAllowed,
            3 => RejectCode::HostnameTaken,
            4 => RejectCode::BadProof,
            5 => RejectCode::UnsupportedVersion,
            6 => RejectCode::Malformed,
            7 => RejectCode::Timeout,
            8 => RejectCode::Draining,
            9 => RejectCode::Internal,
            10 => RejectCode::TooManySessions,
            c => RejectCode::Other(c),
        }
    }
    /// Configuration problems won't fix themselves; a draining or busy
    /// gateway, or a lost race, may.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RejectCode::Timeout
                | RejectCode::Draining
                | RejectCode::Internal
                | RejectCode::HostnameTaken
                | RejectCode::TooManySessions
        )
    }
}
