//! The `casestream` command line.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use casestream::admin::Health;
use casestream::clock::Clock;
use casestream::config::Flags;
use casestream::simulator::{self, Faults, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

/// `text` or `json` (also `--log-format`).
const ENV_LOG_FORMAT: &str = "CASESTREAM_LOG_FORMAT";

#[derive(Parser)]
#[command(
    version,
    about = "Streams SnapEngage chat cases into Kafka as CloudEvents"
)]
struct Cli {
    /// Log format; JSON lines by default when stderr is not a terminal.
    #[arg(long, global = true, value_enum, env = ENV_LOG_FORMAT)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Try it in one command: simulator, forwarder and an embedded broker, events printed.
    Demo(DemoArgs),
    /// Poll the Logs API and publish case events to Kafka.
    Run(RunArgs),
    /// Check the configuration, the Logs API and Kafka; exit non-zero if any fails.
    Check(RunArgs),
    /// Serve a faithful simulation of the SnapEngage Logs API.
    Simulate(SimulateArgs),
    /// Inspect, reset, export and import a state directory (of a stopped or running forwarder).
    State(casestream::toolkit::cli::StateArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Virtual clock speed (30: a 5 minute settle passes in 10 seconds).
    #[arg(long, default_value_t = 30.0)]
    speed: f64,
    /// Stop after this long (real time), e.g. 1m; default: until Ctrl-C.
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// New cases per widget per virtual hour.
    #[arg(long, default_value_t = 60.0)]
    cases_per_hour: f64,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    settings: Flags,
}

fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("`{value}` is not a duration like 30s, 5m or 7d: {e}"))
}

fn rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{value}` is not a rate between 0 and 1")),
    }
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = simulator::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The org id served at /api/v2/{org}/logs.
    #[arg(long, default_value = simulator::DEFAULT_ORG)]
    org: String,
    /// The API token expected in the Authorization header.
    #[arg(long, default_value = simulator::DEFAULT_TOKEN)]
    token: String,
    /// Widget ids, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2")]
    widgets: Vec<String>,
    /// Seed of the deterministic case generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// New cases per hour per widget (virtual time).
    #[arg(long, default_value_t = 60.0)]
    cases_per_hour: f64,
    /// Span of past cases present at start, e.g. 2d.
    #[arg(long, value_parser = duration, default_value = "0s")]
    history: Duration,
    /// SnapEngage's delay between chat end and storing survey data.
    #[arg(long, value_parser = duration, default_value = "5m")]
    survey_delay: Duration,
    /// Most surveys land within this much after the store delay.
    #[arg(long, value_parser = duration, default_value = "10m")]
    survey_spread: Duration,
    /// Late surveys land up to this much after the store delay.
    #[arg(long, value_parser = duration, default_value = "6h")]
    survey_late_max: Duration,
    /// Delay between a chat closing and its case appearing in the API.
    #[arg(long, value_parser = duration, default_value = "2s")]
    index_delay: Duration,
    /// Virtual clock speed: N times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Virtual clock start (RFC 3339); default now.
    #[arg(long)]
    start_time: Option<DateTime<Utc>>,
    /// The real instant (epoch ms) `--start-time` refers to, default the simulator's start:
    /// with the same value in the forwarder's test clock, both share one virtual time.
    #[arg(long, requires = "start_time")]
    clock_anchor_ms: Option<i64>,
    /// Cases per page (the API's maximum is 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=100))]
    page_size: u16,
    /// Rate of 429 responses with Retry-After.
    #[arg(long, value_parser = rate, default_value = "0")]
    fault_429_rate: f64,
    /// Seconds sent in Retry-After with injected 429s.
    #[arg(long, default_value_t = 1)]
    fault_retry_after: u64,
    /// Rate of 500/503 responses.
    #[arg(long, value_parser = rate, default_value = "0")]
    fault_5xx_rate: f64,
    /// Rate of slow responses.
    #[arg(long, value_parser = rate, default_value = "0")]
    fault_slow_rate: f64,
    /// Delay of slow responses.
    #[arg(long, value_parser = duration, default_value = "2s")]
    fault_slow_delay: Duration,
    /// Rate of responses whose JSON is cut off.
    #[arg(long, value_parser = rate, default_value = "0")]
    fault_truncate_rate: f64,
    /// Rate of pages that repeat the previous page's last case.
    #[arg(long, value_parser = rate, default_value = "0")]
    fault_repeat_rate: f64,
    /// A case id whose pages answer 503 on every request (repeatable; `PUT /_sim/faults`
    /// takes it off again).
    #[arg(long = "fault-unreadable-case", value_name = "CASE_ID")]
    fault_unreadable_cases: Vec<String>,
    /// Windows starting before today answer 503 (today's are served).
    #[arg(long)]
    fault_brownout_past_days: bool,
}

impl SimulateArgs {
    fn sim_config(&self) -> SimConfig {
        SimConfig {
            org: self.org.clone(),
            token: self.token.clone(),
            widgets: self.widgets.clone(),
            seed: self.seed,
            cases_per_hour: self.cases_per_hour,
            history: self.history,
            survey_delay: self.survey_delay,
            survey_spread: self.survey_spread,
            survey_late_max: self.survey_late_max,
            index_delay: self.index_delay,
            page_size: usize::from(self.page_size),
            faults: Faults {
                rate_429: self.fault_429_rate,
                retry_after_secs: self.fault_retry_after,
                rate_5xx: self.fault_5xx_rate,
                rate_slow: self.fault_slow_rate,
                slow_ms: u64::try_from(self.fault_slow_delay.as_millis()).unwrap_or(u64::MAX),
                rate_truncate: self.fault_truncate_rate,
                rate_repeat: self.fault_repeat_rate,
                unreadable_cases: self.fault_unreadable_cases.clone(),
                brownout_past_days: self.fault_brownout_past_days,
                // Scripted through the control API (`PUT /_sim/faults`), not flags.
                ..Faults::default()
            },
        }
    }

    fn clock(&self) -> Clock {
        let anchor = self
            .clock_anchor_ms
            .and_then(DateTime::from_timestamp_millis);
        match (self.start_time, self.speed, anchor) {
            (None, 1.0, _) => Clock::system(),
            (Some(start), speed, Some(anchor)) => Clock::anchored(start, speed, anchor),
            (start, speed, _) => Clock::scaled(start.unwrap_or_else(Utc::now), speed),
        }
    }
}

fn init_logging(format: Option<LogFormat>, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(casestream::redact::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let sim = Arc::new(Simulator::new(args.sim_config(), args.clock()));
    let running = simulator::http::start(sim, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %running.addr,
        org = %args.org,
        widgets = %args.widgets.join(","),
        speed = args.speed,
        "Logs API simulator listening: GET http://{}/api/v2/{}/logs",
        running.addr,
        args.org
    );
    shutdown_signal().await;
    tracing::info!("stopping simulator");
    running.stop().await.context("simulator server failed")?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.settings.load(std::env::vars())?;
    let shutdown = CancellationToken::new();
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing the page in flight");
        signalled.cancel();
    });
    let health = Arc::new(Health::default());
    let clock = match std::env::var(casestream::clock::ENV_TEST_CLOCK) {
        Ok(spec) => {
            let clock = Clock::from_test_spec(&spec)?;
            tracing::warn!(now = %clock.now(), "test-only virtual clock in use");
            clock
        }
        Err(_) => Clock::system(),
    };
    casestream::app::run(config, clock, health, shutdown).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    let options = casestream::demo::DemoOptions {
        speed: args.speed,
        duration: args.duration,
        cases_per_hour: args.cases_per_hour,
    };
    casestream::demo::run(options, shutdown, &mut std::io::stdout()).await?;
    Ok(())
}

async fn check(args: RunArgs) -> anyhow::Result<()> {
    let lines = casestream::check::run_checks(args.settings.load(std::env::vars())).await;
    let failed = lines.iter().filter(|l| l.result.is_err()).count();
    for line in &lines {
        println!("{}", casestream::redact::redact(&line.to_string()));
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// At exit, how long a blocking call still under way may hold the process (a transaction
/// call given up on during an outage waits up to the transaction timeout in librdkafka).
const EXIT_BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(command_exit_code());
    runtime.shutdown_timeout(EXIT_BLOCKING_GRACE);
    code
}

async fn command_exit_code() -> std::process::ExitCode {
    match run_command().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Whatever library wrote the message, registered secrets never print.
            eprintln!("Error: {}", casestream::redact::redact(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_command() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo's output is its events; its logs stay quiet unless asked for.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::State(args) => state(args.command).await,
    }
}

async fn state(command: casestream::toolkit::cli::StateCommand) -> anyhow::Result<()> {
    use casestream::toolkit;
    use casestream::toolkit::cli::StateCommand;
    match command {
        StateCommand::Summary { json, at } => {
            let summary = toolkit::summary(&at.target()?.state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
        }
        StateCommand::Case { id, json, at } => {
            let target = at.target()?;
            let report = toolkit::case(&target.state_dir, &id, target.org_id.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if report.case.is_none() && report.dead_letters.is_empty() {
                anyhow::bail!("the state does not know case {id} (never seen, or pruned)");
            }
        }
        StateCommand::Reset {
            widget,
            all,
            since,
            yes,
            at,
        } => {
            let target = at.target()?;
            let widgets = if all {
                toolkit::Widgets::All
            } else {
                toolkit::Widgets::Only(widget)
            };
            let (plan, done) = toolkit::reset(&target, &widgets, since, |plan| {
                eprintln!("{plan}");
                yes || confirm("Forget them?")
            })
            .await?;
            if !done {
                anyhow::bail!(
                    "nothing changed{}",
                    if std::io::stdin().is_terminal() {
                        ""
                    } else {
                        ": not on a terminal, give --yes to reset"
                    }
                );
            }
            println!(
                "forgot {} case(s) from {} on; the next run announces them again",
                plan.cases(),
                plan.since
            );
        }
        StateCommand::Export { output, at } => {
            let dir = at.target()?.state_dir;
            let counts = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    toolkit::transfer::export(&dir, &mut out, &path.display().to_string())?
                }
                None => toolkit::transfer::export(&dir, &mut std::io::stdout().lock(), "stdout")?,
            };
            eprintln!("exported {counts:?}");
        }
        StateCommand::Import {
            file,
            no_trailer,
            at,
        } => {
            let target = at.target()?;
            let counts = if file.as_os_str() == "-" {
                let stdin = std::io::stdin().lock();
                toolkit::transfer::import(&target, stdin, "stdin", no_trailer).await?
            } else {
                let input = std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let name = file.display().to_string();
                let input = std::io::BufReader::new(input);
                toolkit::transfer::import(&target, input, &name, no_trailer).await?
            };
            println!("imported {counts:?}");
        }
    }
    Ok(())
}

/// Asks on the terminal; anything but yes is no, and so is not being on one.
fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}
