fn main() -> std::process::ExitCode {
    floatip::cli::main()
}
