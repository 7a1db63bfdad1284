//! What kind of failure an operation had, for callers that answer with a status (the HTTP
//! API): the message stays the one line the CLI prints.
//!
//! Operations written for the agent fail with a typed [`Failure`]. The older operations fail
//! with plain messages; [`kind_of`] classifies those by their wording, which their unit tests
//! in `control.rs` pin, and the table below is tested against each of them.

use std::fmt;

/// The failure classes the API maps to status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is wrong in itself (400).
    Invalid,
    /// The resource does not exist or belongs to another project (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The data plane is not attached (503).
    Unavailable,
    /// Anything else: the state database or the maps failed (500).
    Internal,
}

/// A failure with its kind; `Display` is the message alone.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error of `kind` saying `message`.
pub fn fail(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    Failure {
        kind,
        message: message.into(),
    }
    .into()
}

/// Wording of the older operations' messages, by kind; checked in order.
const WORDING: &[(&str, Kind)] = &[
    ("the data plane is not attached", Kind::Unavailable),
    ("cannot lock the state database", Kind::Unavailable),
    (" not found", Kind::NotFound),
    (" does not exist", Kind::NotFound),
    (" already exists", Kind::Conflict),
    (" is already allocated", Kind::Conflict),
    (" already has floating IP ", Kind::Conflict),
    (" is already associated with ", Kind::Conflict),
    (" is at its quota", Kind::Conflict),
    ("no more floating IPs in pool ", Kind::Conflict),
    (" allocated floating IP", Kind::Conflict),
    (" overlaps pool ", Kind::Conflict),
    (" above the data plane's limit", Kind::Conflict),
    (" must be 1 to ", Kind::Invalid),
    (" must be at most ", Kind::Invalid),
    (" must not start with '-'", Kind::Invalid),
    (" is not a unicast host address", Kind::Invalid),
    (" lies in floating IP pool ", Kind::Invalid),
    (" is not an address of pool ", Kind::Invalid),
    (
        " is not reachable through an internal interface",
        Kind::Invalid,
    ),
    (" is not a valid interface name", Kind::Invalid),
    (", an address of the gateway's interface ", Kind::Invalid),
];

/// The kind of `err`: its [`Failure`] if it has one, else by wording; unknown errors are
/// [`Kind::Internal`].
pub fn kind_of(err: &anyhow::Error) -> Kind {
    if let Some(f) = err.downcast_ref::<Failure>() {
        return f.kind;
    }
    let text = format!("{err:#}");
    WORDING
        .iter()
        .find(|(w, _)| text.contains(w))
        .map_or(Kind::Internal, |(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, anyhow};

    use super::*;

    #[test]
    fn typed_failures_survive_context() {
        let e = Err::<(), _>(fail(Kind::Conflict, "port busy"))
            .context("line 3")
            .unwrap_err();
        assert_eq!(kind_of(&e), Kind::Conflict);
        assert_eq!(format!("{e:#}"), "line 3: port busy");
    }

    #[test]
    fn older_messages_are_classified() {
        for (msg, kind) in [
            (
                "the data plane is not attached; run `floatip attach ...` first",
                Kind::Unavailable,
            ),
            ("floating IP 203.0.113.3 not found", Kind::NotFound),
            ("pool nope does not exist", Kind::NotFound),
            ("pool public already exists", Kind::Conflict),
            (
                "floating IP 203.0.113.7 is already allocated",
                Kind::Conflict,
            ),
            (
                "fixed IP 10.0.0.5 already has floating IP 203.0.113.1",
                Kind::Conflict,
            ),
            (
                "floating IP 203.0.113.1 is already associated with 10.0.0.5; use --force to move it",
                Kind::Conflict,
            ),
            (
                "project demo is at its quota: 2 of 2 floating IPs in use",
                Kind::Conflict,
            ),
            ("no more floating IPs in pool public", Kind::Conflict),
            (
                "pool public has 1 allocated floating IP; delete them first",
                Kind::Conflict,
            ),
            (
                "fixed IP 0.0.0.0 is not a unicast host address",
                Kind::Invalid,
            ),
            (
                "203.0.113.7 is not an address of pool public (203.0.113.0/29)",
                Kind::Invalid,
            ),
            (
                "description must be at most 255 characters, without control characters",
                Kind::Invalid,
            ),
            (
                "fixed IP 10.9.0.5 is not reachable through an internal interface of the gateway",
                Kind::Invalid,
            ),
            ("map full", Kind::Internal),
        ] {
            assert_eq!(kind_of(&anyhow!(msg.to_owned())), kind, "{msg}");
        }
    }
}
