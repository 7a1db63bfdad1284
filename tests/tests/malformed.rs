//! CI-sized malformed-frame fuzz (`cargo xtask fuzz` runs the long one).

#[test]
fn malformed_frames_never_abort_or_corrupt() {
    let frames = std::env::var("FLOATIP_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let sum = tests::malformed::run(frames, 0x5eed);
    println!("{sum:?}");
    // The mutations keep many frames translatable: a run that translated or
    // dropped next to nothing exercised nothing.
    assert!(sum.runs >= frames * 3, "{sum:?}");
    assert!(
        sum.changed > frames / 10 && sum.dropped > frames / 100,
        "{sum:?}"
    );
}
