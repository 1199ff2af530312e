//! The `ipm-stream` binary: flags, configuration, logging and signals. The service itself
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ipm_stream::Config;

/// Exit status for an unusable configuration (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// Live IPM (installs per thousand impressions) per ad creative, from Kafka to Kafka and
/// Prometheus.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `IPM__SECTION__KEY` variables override its values.
    #[arg(long, global = true, env = "IPM_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service against the configured Kafka cluster (the default).
    Run,
    /// Produce realistic impression and install traffic into the configured cluster.
    Simulate(ipm_stream::simulate::SimulateArgs),
    /// Run the whole pipeline on an embedded Kafka with simulated traffic and a live view.
    Demo(ipm_stream::demo::DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's table owns the terminal, so it routes log lines itself.
    let demo_log = match cli.command {
        Some(Command::Demo(_)) => ipm_stream::demo::init_logging(),
        _ => {
            init_logging(cli.log_format);
            None
        }
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(config)),
        Command::Simulate(args) => runtime.block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            ipm_stream::simulate::run(config, args, shutdown).await
        }),
        Command::Demo(args) => runtime.block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            ipm_stream::demo::run(config, args, demo_log, shutdown).await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let running = ipm_stream::start(config, shutdown.clone()).await?;
    tokio::spawn(cancel_on_signal(shutdown));
    running.wait().await?;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
    }
    shutdown.cancel();
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
