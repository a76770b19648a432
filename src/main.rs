//! The `kube-ambassador` binary: parse flags, set up logging, run.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use kube_ambassador::cli::{Cli, Command, InjectArgs, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // kubectl exits 1 on a bad flag; help and version are not errors.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(Command::Inject(args)) = &cli.command {
        return inject(args);
    }
    let level = match cli.verbosity {
        0..=3 => "info",
        4 | 5 => "debug",
        _ => "trace",
    };
    // RUST_LOG wins when set to something; an empty one means "not set".
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("warn,kube_ambassador={level}")));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Control characters a request carries are escaped (`logging`); JSON's own
        // string escaping covers that format.
        LogFormat::Text => logs
            .fmt_fields(kube_ambassador::logging::EscapingFields::default())
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }

    kube_ambassador::memory::limit_arenas();
    let mut builder = match cli.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(kube_ambassador::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `kube-ambassador inject`: the file (or stdin) in, the injected manifests on stdout.
fn inject(args: &InjectArgs) -> ExitCode {
    use std::io::{Read as _, Write as _};
    let input = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|e| format!("cannot read stdin: {e}"))
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| format!("cannot read {}: {e}", args.file.display()))
    };
    let opts = kube_ambassador::inject::Options {
        image: args.image.clone(),
        classic: args.classic,
        isolate_token: args.isolate_token,
        env_name: args.env.clone(),
        proxy_port: args.proxy_port,
        admin_port: args.admin_port,
        uninject: args.uninject,
    };
    let result = input.and_then(|text| {
        kube_ambassador::inject::run(&text, &opts).map_err(|e| match args.file.as_os_str() {
            f if f == "-" => e.to_string(),
            _ => format!("{}: {e}", args.file.display()),
        })
    });
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                eprintln!("error: cannot write to stdout: {e}");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
