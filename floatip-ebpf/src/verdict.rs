//! What a stage decided about a frame, for the entry point to act on. Its
//! own module so the stages that produce a verdict (translate, ARP) do not
//! import each other for it.

use crate::forward::{Miss, Route};

/// Why a frame was dropped, for the event log.
#[derive(Clone, Copy)]
pub enum DropReason {
    Spoofed,
    Unassociated,
    Martian,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Spoofed => "spoofed source",
            DropReason::Unassociated => "unassociated pool address",
            DropReason::Martian => "martian source",
        }
    }
}

/// What the entry point should do with the frame.
pub enum Verdict {
    /// Hand to the kernel untouched (counted as `PASSED`).
    Pass,
    /// Hand to the kernel untouched although floatip would translate it,
    /// because the kernel answers it with an ICMP error (the TTL expires
    /// here, the route ends in an error, it needs fragmenting and may not
    /// be), which then quotes what the sender really sent. Counted as
    /// `PASSED_TO_KERNEL`, logged with why.
    ToKernel { why: Miss },
    /// Dropped, with why and the addresses, for the event log.
    Drop { why: DropReason, src: u32, dst: u32 },
    /// The frame was turned into a reply: send it back out.
    Reply,
    /// Translated: forward it (the IPv4 header is at `l3`) along `route`,
    /// looked up before the rewrite, or through the kernel when it missed.
    Forward {
        l3: usize,
        route: Result<Route, Miss>,
    },
}
