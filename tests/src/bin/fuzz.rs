//! `cargo xtask fuzz`: the long malformed-frame fuzz of the real programs.
//! Usage: fuzz [--frames N] [--seed S]

fn main() {
    let mut frames = 1_000_000u64;
    let mut seed = 0xf1_0a71u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--frames", Some(v)) => frames = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: fuzz [--frames N] [--seed S]");
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
}
