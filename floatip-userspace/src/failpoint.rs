//! Crash points for the crash-consistency tests. Compiled in only with the
//! `failpoints` feature (the tests crate turns it on); then the process
//! kills itself with SIGKILL at the point named by `FLOATIP_FAILPOINT`, as
//! a crash or an OOM kill would, with no destructor or rollback running.

/// Every failpoint, for tests that enumerate them.
pub const ALL: &[&str] = &[
    "maps-marked-dirty",
    "pair-half-written",
    "maps-updated-before-commit",
    "committed-before-generation",
    "bulk-middle",
];

#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("FLOATIP_FAILPOINT").as_deref() == Ok(name) {
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let _ = name;
}

/// Makes the step named `name` slow: with `FLOATIP_PAUSE=NAME:MS` set, sleeps MS milliseconds
/// here. For tests that show what does not wait for that step (the API's answer for the
/// gratuitous ARP); compiled in only with the `failpoints` feature.
#[inline]
pub fn pause(name: &str) {
    #[cfg(feature = "failpoints")]
    if let Ok(v) = std::env::var("FLOATIP_PAUSE")
        && let Some((n, ms)) = v.split_once(':')
        && n == name
        && let Ok(ms) = ms.parse()
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let _ = name;
}
