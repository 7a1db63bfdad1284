//! `cargo xtask fuzz`: the long runs of the malformed-frame fuzz and of the
//! differential test against the reference model.
//! Usage: fuzz [--frames N] [--cases N] [--seed S]

fn main() {
    let mut frames = 1_000_000u64;
    let mut seed = 0xf1_0a71u64;
    let mut cases = 1_000_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--frames", Some(v)) => frames = v,
            ("--seed", Some(v)) => seed = v,
            ("--cases", Some(v)) => cases = v,
            _ => {
                eprintln!("usage: fuzz [--frames N] [--cases N] [--seed S]");
                std::process::exit(2);
            }
        }
    }
    let t = std::time::Instant::now();
    let sum = tests::malformed::run(frames, seed);
    println!(
        "malformed-frame fuzz: {frames} frames, seed {seed}: {sum:?} in {:.1?}: no violation",
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let translated = tests::differential::run(cases, seed);
    println!(
        "differential test: {cases} cases ({translated} translated), seed {seed}, in {:.1?}: programs match the model",
        t.elapsed()
    );
}
