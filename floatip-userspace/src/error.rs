//! What kind of mistake an error is, so that the CLI can pick its exit code and `-f json`
//! error type, and the API its HTTP status, without reading messages.

use std::fmt;

use serde::Serialize;

/// The kinds a caller can act on differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong: a bad value, a range that can never be used.
    Invalid,
    /// Something named does not exist (or belongs to another project).
    NotFound,
    /// The request collides with the current state: already allocated, associated, in use.
    Conflict,
    /// The data plane is not attached, or belongs to another database.
    Unavailable,
    /// Anything else: the system refused (permissions, disk, kernel).
    System,
}

impl ErrorKind {
    /// The `floatip` exit code of an error of this kind (documented in the README).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::System => 1,
            ErrorKind::Invalid => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Unavailable => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::System => "system",
        }
    }
}

/// An error of a known kind; travels inside `anyhow::Error` like any other.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An `anyhow::Error` of `kind`.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Error {
        kind,
        message: message.into(),
    })
}

/// Marks a parser's error as the caller's mistake: what `addr` rejects is always invalid input.
pub fn invalid<T>(result: anyhow::Result<T>) -> anyhow::Result<T> {
    result.map_err(|e| error(ErrorKind::Invalid, format!("{e:#}")))
}

/// The kind of `err`: the first classified error in its chain, else [`ErrorKind::System`].
pub fn kind_of(err: &anyhow::Error) -> ErrorKind {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>().map(|e| e.kind))
        .unwrap_or(ErrorKind::System)
}

/// `bail!` with a kind: `fail!(NotFound, "floating IP {ip} not found")`.
macro_rules! fail {
    ($kind:ident, $($arg:tt)+) => {
        return Err($crate::error::error(
            $crate::error::ErrorKind::$kind,
            format!($($arg)+),
        ))
    };
}
pub(crate) use fail;
