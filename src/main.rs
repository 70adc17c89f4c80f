//! `e2e-chat-server`: loads `.env`, reads the settings, starts logging and
//! runs the server until SIGINT or SIGTERM (a second one exits at once).

use std::process::ExitCode;

use e2e_chat_server::{config, healthcheck, logging, Config, Server};

const USAGE: &str = "\
usage: e2e-chat-server [healthcheck | check-config | --version | --help]

  (no argument)  run the server; settings come from the environment and .env
  healthcheck    exit 0 when GET /health on this machine answers 200
  check-config   check the settings, print them, and exit (0 when valid)
  --version      print the version";

/// Exit status of a second SIGINT/SIGTERM during a graceful shutdown.
const FORCED_EXIT: i32 = 130;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version" | "-V") => {
            println!("e2e-chat-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!("{USAGE}\n\n{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        None | Some("healthcheck" | "check-config") => {}
        Some(other) => {
            eprintln!("e2e-chat-server: unknown argument {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("e2e-chat-server: cannot read .env: {e}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("e2e-chat-server: {e}");
            return ExitCode::from(2);
        }
    };
    if arg.as_deref() == Some("check-config") {
        return match config.check_cluster() {
            Ok(()) => {
                println!("settings are valid: {}", config.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("e2e-chat-server: {e}");
                ExitCode::from(2)
            }
        };
    }
    if arg.is_some() {
        return match healthcheck::probe(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    logging::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("e2e-chat-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("e2e-chat-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), settings = %config.summary(), "starting");
    let server = Server::start(config).await?;
    let metrics = server
        .metrics_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(addr = %server.addr(), %metrics, "listening");
    shutdown_signal().await;
    tracing::info!(second_signal = "exits at once", "shutting down");
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second signal during shutdown: exiting at once");
        std::process::exit(FORCED_EXIT);
    });
    server.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}
