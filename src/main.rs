//! The touchstream command line: run | notify | collect | token | demo | replay | validate | gen.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use touchstream::{config::Pipeline, replay, rules, wall_clock_ms};

#[derive(Parser)]
#[command(
    name = "touchstream",
    version,
    about = "Real-time sales-behaviour telemetry on NATS JetStream and DataFusion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline on NATS JetStream (until SIGINT/SIGTERM), serving /metrics.
    Run(touchstream::live::RunArgs),
    /// Deliver alerts from touch.alerts.> to the receivers of the pipeline's [notify] section
    /// (also part of `run` when receivers are declared).
    Notify(touchstream::live::notify::NotifyArgs),
    /// Serve the HTTP collector of the pipeline's [collect] section (pixels, tracked links,
    /// beacons, SDK batches) until SIGINT/SIGTERM (also part of `run` when configured).
    Collect(touchstream::live::collect::CollectArgs),
    /// Mint the pixel URL and tracked-link URL of an asset with the first [collect] key.
    Token {
        /// Pipeline file with a `[collect]` section.
        #[arg(long, default_value = "pipelines/default.toml")]
        pipeline: PathBuf,
        #[arg(long)]
        asset_id: String,
        #[arg(long)]
        rep_id: String,
        /// The asset kind, sent as utm_medium (quote, proposal, case, contract).
        #[arg(long)]
        medium: String,
        /// utm_campaign.
        #[arg(long)]
        campaign: Option<String>,
        /// Landing page of the tracked link (an allowed domain).
        #[arg(long)]
        target_url: Option<String>,
    },
    /// Start a private NATS server, run the pipeline on generated traffic and print alerts.
    Demo(touchstream::live::DemoArgs),
    /// Replay a JSONL file through the engine, event time only (EVENTS.md §9).
    Replay(replay::ReplayArgs),
    /// Check a pipeline file and report every problem with its location.
    Validate {
        /// Pipeline file(s).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Generate a seeded workload: events.jsonl and directory/*.csv, and/or publish it to NATS.
    Gen {
        #[command(flatten)]
        args: touchstream::r#gen::GenArgs,
        /// Output folder.
        #[arg(long, required_unless_present = "publish")]
        out: Option<PathBuf>,
        /// Publish the events to this NATS server (subjects touch.in.<kind>, Nats-Msg-Id =
        /// event_id); the input stream must exist (`touchstream run` creates it).
        #[arg(long)]
        publish: Option<String>,
        /// Publish rate, events per second (0 = as fast as acks allow).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
    },
}

fn validate(files: &[PathBuf]) -> bool {
    let mut ok = true;
    for f in files {
        match Pipeline::load(f) {
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
            Ok(p) => {
                let mut problems = rules::compile(&p).err().unwrap_or_default();
                let dir = p.directory_path();
                match touchstream::directory::Directory::load(&dir) {
                    Err(e) => problems.push(touchstream::config::Problem {
                        path: "directory.path".into(),
                        line: None,
                        message: format!("{e:#}"),
                    }),
                    // Receivers named by regions.csv must be declared in [notify].
                    Ok(d) => {
                        if let Err(e) = touchstream::live::notify::prepare(&p, &d) {
                            problems.push(touchstream::config::Problem {
                                path: "notify.routes".into(),
                                line: None,
                                message: format!("{e:#}"),
                            });
                        }
                    }
                }
                if problems.is_empty() {
                    println!("{}: ok ({} rule(s))", f.display(), p.rules.len());
                } else {
                    eprintln!(
                        "{}",
                        touchstream::config::ConfigErrors {
                            file: f.clone(),
                            problems
                        }
                    );
                    ok = false;
                }
            }
        }
    }
    ok
}

/// `touchstream token`: mints offline, with the pipeline file's first key.
fn token(
    pipeline: &std::path::Path,
    claims: touchstream::collect::token::Claims,
    target_url: Option<&str>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let p = Pipeline::load(pipeline)?;
    let cfg = p
        .collect
        .context("the pipeline file has no [collect] section (README \"Collector\")")?;
    let keys = touchstream::collect::token::Keys::new(&cfg.keys).map_err(anyhow::Error::msg)?;
    let m = touchstream::collect::server::mint(
        &keys,
        &cfg.public_url,
        &cfg.allowed_redirect_domains,
        &claims,
        target_url,
    )
    .map_err(anyhow::Error::msg)?;
    println!(
        "{}",
        serde_json::json!({"token": m.token, "pixel_url": m.pixel_url, "link_url": m.link_url})
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    touchstream::tune_allocator();
    // async-nats logs every connection event at info; touchstream logs the ones an operator
    // needs (`nats: connected`, `nats: disconnected`) itself. `RUST_LOG` overrides both.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| {
            rt.block_on(touchstream::live::run(
                args,
                touchstream::live::shutdown_signal(),
            ))
        }),
        Command::Notify(args) => runtime().and_then(|rt| {
            rt.block_on(touchstream::live::notify::notify(
                args,
                touchstream::live::shutdown_signal(),
            ))
        }),
        Command::Collect(args) => runtime().and_then(|rt| {
            rt.block_on(touchstream::live::collect::collect(
                args,
                touchstream::live::shutdown_signal(),
            ))
        }),
        Command::Token {
            pipeline,
            asset_id,
            rep_id,
            medium,
            campaign,
            target_url,
        } => token(
            &pipeline,
            touchstream::collect::token::Claims {
                asset_id,
                rep_id,
                medium,
                campaign,
            },
            target_url.as_deref(),
        ),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(touchstream::live::demo(args))),
        Command::Replay(args) => replay::replay(&args, wall_clock_ms()).map(|t| {
            eprintln!(
                "replay: {} events in, {} duplicates, {} late, {} dead letters, {} alert records, {} sessions -> {}",
                t.events_in, t.duplicates, t.late, t.dead_letters, t.alerts, t.sessions,
                args.out.display()
            );
        }),
        Command::Validate { files } => {
            return if validate(&files) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
        Command::Gen {
            args,
            out,
            publish,
            rate,
        } => touchstream::r#gen::generate(&args).and_then(|w| {
            if let Some(out) = &out {
                w.write_to(out)?;
                eprintln!("wrote {}", out.display());
            }
            if let Some(url) = publish {
                let n = runtime()?.block_on(async {
                    let js = async_nats::jetstream::new(touchstream::live::connect(&url).await?);
                    touchstream::live::publish_lines(&js, &w.events, rate).await
                })?;
                eprintln!("published {n} events to {url}");
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
