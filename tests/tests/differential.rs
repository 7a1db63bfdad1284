//! The real programs against the reference model (`cargo xtask fuzz` runs more cases).

#[test]
fn programs_match_the_reference_model() {
    let cases = std::env::var("FLOATIP_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let translated = tests::differential::run(cases, 0xd1ff);
    // A generator that never produced translatable packets would prove nothing.
    assert!(
        translated > cases / 10,
        "only {translated} of {cases} cases translated"
    );
}
