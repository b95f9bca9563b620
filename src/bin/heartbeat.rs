//! `heartbeat`: the client agent (`run`), the health probe (`check`), and
//! views of the daemon's status API (`status`, `watch`).
//!
//! A thin shell around [`heartbeatd::client`]: parse arguments (defined in
//! [`heartbeatd::cli::agent`]), start logging, run, map the outcome to an
//! exit code.
//!
//! Exit codes: `run` exits 0 after SIGINT/SIGTERM (BYE sent), 78
//! (EX_CONFIG) when the daemon refused the agent for good (ERROR 2, 4 or 6:
//! its token, id or version must change first, so `heartbeat@.service` does
//! not restart it) and 1 when it could not start or its thread panicked;
//! `check` exits 0 if the daemon is healthy and 1 otherwise; `status` and
//! `watch` exit 1 when the status API cannot be read; all exit 2 on invalid
//! arguments (`run` checks its own before it starts).

use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, SystemTime};

use clap::Parser;
use heartbeatd::cli::agent::{Api, CheckArgs, Cli, Command, RunArgs, StatusArgs, WatchArgs};
use heartbeatd::client::{self, AgentConfig, CheckConfig, ConfigError, KeepaliveOptions, StopReason};
use heartbeatd::event::Logfmt;
use heartbeatd::logging;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => {
            let code = run(args);
            // Lines queued behind a full stderr (a slow reader of `heartbeat
            // run 2>&1 | …`) go out before the process ends, up to
            // logging::EXIT_WAIT, its last `stopped` line among them.
            logging::finish();
            code
        }
        Command::Check(args) => check(args),
        Command::Status(args) => status(args),
        Command::Watch(args) => watch(args),
    }
}

fn status(args: StatusArgs) -> ExitCode {
    let (api, token) = match api_token(&args.api).and_then(|t| Ok((args.api.endpoint()?, t))) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.all {
        return status_all(&args, &api, token.as_deref());
    }
    let clients = client::status::clients(&api, args.listener.as_deref(), args.timeout, token.as_deref());
    print_reply(clients, args.json, client::status::table, &format!("{api}/clients"))
}

/// `heartbeat status --all`: online and expected clients with their state.
fn status_all(args: &StatusArgs, api: &client::status::Endpoint, token: Option<&str>) -> ExitCode {
    let clients = client::status::presence(api, args.listener.as_deref(), args.timeout, token);
    print_reply(clients, args.json, client::status::presence_table, &format!("{api}/clients?state=all"))
}

/// Prints what `heartbeat status` read: pretty JSON with `--json`, else
/// the `table` of it at the current time; a reply that could not be read
/// from `what` is an error exit.
fn print_reply<T: serde::Serialize>(
    reply: Result<Vec<T>, client::status::StatusError>,
    json: bool,
    table: fn(&[T], SystemTime) -> String,
    what: &str,
) -> ExitCode {
    match reply {
        Ok(clients) if json => match serde_json::to_string_pretty(&clients) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("heartbeat: encoding JSON: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(clients) => {
            print!("{}", table(&clients, SystemTime::now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heartbeat: reading {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `heartbeat watch --json [--resume FILE]`: JSON lines, resumable
/// (`client::resume`).
fn watch_json(args: &WatchArgs, api: &client::status::Endpoint, token: Option<&str>) -> ExitCode {
    let path = args.resume.as_deref();
    let mut cursor = path.and_then(client::resume::Cursor::load);
    let mut seen = 0usize;
    let mut connected_once = false;
    let mut stdout = std::io::stdout().lock();
    loop {
        let before = seen;
        let result = client::resume::follow_once(api, token, path, &mut cursor, WATCH_IDLE, &mut stdout, |n| {
            args.count.is_none_or(|max| before + n < max)
        });
        match result {
            Ok(n) => {
                connected_once = true;
                seen += n;
                if args.count.is_some_and(|max| seen >= max) {
                    return ExitCode::SUCCESS;
                }
                eprintln!("heartbeat: feed ended; resuming in {}s", WATCH_RETRY.as_secs());
            }
            Err(client::status::StatusError::Io(what, e)) if what == "writing stdout" => {
                eprintln!("heartbeat: {what}: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) if !connected_once && cursor.is_none() => {
                eprintln!("heartbeat: following {api}/events: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => eprintln!("heartbeat: feed broken ({e}); resuming in {}s", WATCH_RETRY.as_secs()),
        }
        thread::sleep(WATCH_RETRY);
    }
}

/// How long `watch` waits before resuming a broken feed.
const WATCH_RETRY: Duration = Duration::from_secs(2);

/// Longest silence on the feed before `watch` reconnects: the daemon sends
/// a keepalive every 15 s.
const WATCH_IDLE: Duration = Duration::from_secs(40);

fn watch(args: WatchArgs) -> ExitCode {
    let (api, token) = match api_token(&args.api).and_then(|t| Ok((args.api.endpoint()?, t))) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        return watch_json(&args, &api, token.as_deref());
    }
    let mut last_id = args.last_event_id.map(|id| id.to_string());
    let mut seen = 0usize;
    let mut connected_once = false;
    loop {
        let resume_after = last_id.clone();
        let result = client::status::follow(&api, resume_after.as_deref(), WATCH_IDLE, token.as_deref(), |event| {
            connected_once = true;
            if let Some(id) = &event.id {
                last_id = Some(id.clone());
            }
            for line in watch_lines(event) {
                match (&event.id, args.ids) {
                    (Some(id), true) => println!("{id} {line}"),
                    _ => println!("{line}"),
                }
            }
            if matches!(event.event.as_str(), "online" | "offline") {
                seen += 1;
            }
            args.count.is_none_or(|n| seen < n)
        });
        if args.count.is_some_and(|n| seen >= n) {
            return ExitCode::SUCCESS;
        }
        match result {
            Err(e) if !connected_once => {
                eprintln!("heartbeat: following {api}/events: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => eprintln!("heartbeat: feed broken ({e}); resuming in {}s", WATCH_RETRY.as_secs()),
            Ok(()) => eprintln!("heartbeat: feed ended; resuming in {}s", WATCH_RETRY.as_secs()),
        }
        thread::sleep(WATCH_RETRY);
    }
}

/// The lines `watch` prints for one feed event.
fn watch_lines(event: &client::status::SseEvent) -> Vec<String> {
    let Ok(data) = serde_json::from_str::<serde_json::Value>(&event.data) else {
        return vec![format!("{} {}", event.event, Logfmt(&event.data))];
    };
    let text = |key: &str| data.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    let field = |key: &str| text(key).map(|v| format!(" {key}={}", Logfmt(&v))).unwrap_or_default();
    match event.event.as_str() {
        "snapshot" => {
            let clients = data.get("clients").and_then(|c| c.as_array()).cloned().unwrap_or_default();
            let mut lines = vec![format!("snapshot online={}", clients.len())];
            lines.extend(clients.iter().map(|c| {
                let get = |key: &str| c.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                format!(
                    "present client={} peer={} listener={} session={} since={}",
                    Logfmt(&get("id").unwrap_or_default()),
                    Logfmt(&get("peer").unwrap_or_default()),
                    Logfmt(&get("listener").unwrap_or_default()),
                    Logfmt(&get("session").unwrap_or_default()),
                    Logfmt(&get("online_since").unwrap_or_default()),
                )
            }));
            lines
        }
        "online" | "offline" => {
            let mut line = format!("{} {}", text("at").unwrap_or_default(), event.event);
            for key in ["client", "peer", "listener", "protocol", "session", "reason", "silent_ms", "connected_ms"] {
                line.push_str(&field(key));
            }
            vec![line]
        }
        other => {
            let mut line = other.to_owned();
            if let Some(map) = data.as_object() {
                for (key, value) in map {
                    line.push_str(&format!(" {key}={}", Logfmt(&value.to_string())));
                }
            }
            vec![line]
        }
    }
}

/// The exit status of a usage error, as clap's own.
const USAGE: u8 = 2;

/// The exit status of a refusal retrying cannot fix (sysexits' EX_CONFIG):
/// distinct from a crash, for `RestartPreventExitStatus=`.
const REFUSED: u8 = 78;

fn run(args: RunArgs) -> ExitCode {
    logging::init(args.log_level);
    let token = match read_token(args.server.token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match args.server.client_tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = AgentConfig::new(args.server.server, args.id);
    config.token = token;
    config.tls = tls;
    config.connect_timeout = args.connect_timeout;
    config.backoff_base = args.backoff_base;
    config.backoff_cap = args.backoff_cap;
    config.keepalive = KeepaliveOptions {
        idle: args.keepalive_idle,
        interval: args.keepalive_interval,
        count: args.keepalive_count,
        user_timeout: args.user_timeout,
    };
    // Checked before anything is logged: an invalid argument is a usage
    // error (exit 2, as `run --help` says), not an agent that started and
    // failed.
    if let Err(e) = config.validate() {
        eprintln!("error: invalid {}: {e}\n\nFor more information, try 'heartbeat run --help'.", option_of(&e));
        return ExitCode::from(USAGE);
    }
    // Signals are registered before the agent starts, so a SIGTERM that
    // arrives during start-up still ends in a BYE rather than the default
    // disposition.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("heartbeat: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "starting version={} server={} id={}",
        env!("CARGO_PKG_VERSION"),
        Logfmt(&config.server),
        Logfmt(&config.id)
    );
    let agent = match client::start(config) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = agent.stopper();
    // The signal thread only asks for the stop; the main thread joins the
    // agent, so a fatal refusal ends the process as well as a signal does.
    let spawned = thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::info!("stopping signal={signal}");
            stopper.stop();
        }
    });
    if let Err(e) = spawned {
        eprintln!("heartbeat: spawning the signal thread: {e}");
        agent.stop();
        return ExitCode::FAILURE;
    }
    let status = agent.join();
    match status.stopped() {
        Some(reason @ StopReason::Refused { .. }) => {
            eprintln!("heartbeat: {reason}");
            ExitCode::from(REFUSED)
        }
        Some(reason) if reason.is_fatal() => {
            eprintln!("heartbeat: {reason}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// The `run` option an agent config error is about.
fn option_of(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Server(_) => "--server",
        ConfigError::Id(_) => "--id",
        ConfigError::TokenTooLong(_) => "--token-file",
        ConfigError::Zero("connect timeout") => "--connect-timeout",
        ConfigError::Zero(_) => "--backoff-base",
        ConfigError::CapBelowBase { .. } => "--backoff-cap",
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let token = match read_token(args.server.token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match args.server.client_tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = CheckConfig {
        tls,
        server: args.server.server,
        id: args.id.unwrap_or_else(|| format!("heartbeat-check-{}", std::process::id())),
        token,
        timeout: args.timeout,
    };
    match client::check(&config) {
        Ok(r) => {
            println!(
                "healthy server={} peer={} session={} interval_ms={} timeout_ms={} rtt_us={}",
                Logfmt(&config.server),
                r.peer,
                r.session,
                r.interval.as_millis(),
                r.timeout.as_millis(),
                r.rtt.as_micros()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!(
                "unhealthy server={} reason={} error={}",
                Logfmt(&config.server),
                e.as_str(),
                Logfmt(&e.to_string())
            );
            ExitCode::FAILURE
        }
    }
}

/// The status API's token from `--token-file` (or its environment
/// variable), read as the HELLO token is; `None` without the flag. It goes
/// into a header, so it must be printable ASCII without spaces, as the
/// daemon requires of its `http.token_file`.
fn api_token(api: &Api) -> Result<Option<String>, String> {
    let Some(path) = api.token_file.as_deref() else { return Ok(None) };
    let token = read_token(Some(path))?;
    if token.is_empty() || !token.iter().all(|b| (0x21..=0x7E).contains(b)) {
        return Err(format!(
            "--token-file {}: the token must be 1 or more printable ASCII characters without spaces",
            path.display()
        ));
    }
    Ok(Some(String::from_utf8_lossy(&token).into_owned()))
}

/// Reads the token file: its bytes, less surrounding whitespace (the
/// newline editors and `echo` add), as the daemon reads its `tokens_file`,
/// and with the daemon's checks: a regular file of at most 1 MiB, opened
/// without blocking (a FIFO named by mistake is refused at once). An absent
/// flag means no token.
fn read_token(path: Option<&Path>) -> Result<Vec<u8>, String> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let token = heartbeatd::config::read_capped(path, heartbeatd::config::MAX_TOKENS_FILE_BYTES)
        .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    Ok(token.trim_ascii().to_vec())
}
