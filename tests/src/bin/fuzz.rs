//! `cargo xtask fuzz`: the long runs of the malformed-frame fuzz, of the
//! differential test against the reference model, and of the differential
//! namespace test against the kernel (`tests::oracle`, all three modes).
//! Usage: fuzz [--frames N] [--cases N] [--oracle-cases N] [--seed S]

fn main() {
    let mut frames = 1_000_000u64;
    let mut seed = 0xf1_0a71u64;
    let mut cases = 1_000_000u64;
    let mut oracle_cases = 3_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--frames", Some(v)) => frames = v,
            ("--seed", Some(v)) => seed = v,
            ("--cases", Some(v)) => cases = v,
            ("--oracle-cases", Some(v)) => oracle_cases = v,
            _ => {
                eprintln!("usage: fuzz [--frames N] [--cases N] [--oracle-cases N] [--seed S]");
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
    if oracle_cases > 0 {
        let t = std::time::Instant::now();
        // The binaries this one runs sit next to it (target/release/).
        let me = std::env::current_exe().expect("the fuzz binary's own path");
        let floatip = std::env::var_os("FLOATIP_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| me.with_file_name("floatip"));
        let opt = tests::oracle::Options {
            cases: oracle_cases as usize,
            seed,
            modes: vec![
                tests::netns::Mode::Xdp,
                tests::netns::Mode::XdpGeneric,
                tests::netns::Mode::Tc,
            ],
            floatip_bin: &floatip,
            netprobe_bin: &me.with_file_name("netprobe"),
        };
        let report = tests::oracle::run(&opt).unwrap_or_else(|e| {
            eprintln!("oracle test could not run: {e:#}");
            std::process::exit(1)
        });
        println!("{}", report.text());
        if !report.passed() {
            std::process::exit(1);
        }
        println!(
            "oracle test: {oracle_cases} cases, seed {seed}, in {:.1?}: no unexpected difference",
            t.elapsed()
        );
    }
}
