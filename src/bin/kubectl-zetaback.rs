//! `kubectl-zetaback`: installed on the PATH it works as `kubectl zetaback ...`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    zetaback::cli::main().await
}
