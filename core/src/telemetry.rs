//! Logging set-up shared by the binaries.

/// Installs a `tracing` subscriber reading `RUST_LOG` (default `info`); JSON when
/// `ZETABACK_LOG_FORMAT=json`.
pub fn init() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ZETABACK_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
