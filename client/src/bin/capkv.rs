//! `capkv`: the command-line client. Parses flags, calls the SDK, prints the
//! answer as text or JSON. Exit codes: 0 success, 1 any error (printed on
//! stderr as `error: <message>`), 2 usage errors, 3 a compare-and-set whose
//! comparison failed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use capkv_client::time::{format_timestamp_ms, now_ms, parse_time};
use capkv_client::{
    proto, read_consistency_name, write_consistency_name, Client, ClientConfig, ClusterStatus,
    Expected, RangeQuery, ReadLevel, Session, WriteLevel, MAX_CALL_TIMEOUT_MS,
};
use clap::parser::ValueSource;
use clap::{ArgGroup, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// The three-node local cluster that `scripts/` starts, one loopback address
/// per node.
const DEFAULT_ENDPOINTS: &str = "127.0.0.11:7001,127.0.0.12:7002,127.0.0.13:7003";

/// Readings `reading range` returns by default, across pages.
const DEFAULT_RANGE_LIMIT: u64 = 1_000;
/// The most readings one `reading range` collects: all of them are held in
/// memory before printing, so the bound keeps that to a few hundred MB.
const MAX_RANGE_LIMIT: u64 = 1_000_000;

/// Tags per reading, as the protocol allows.
const MAX_TAGS: usize = 16;

/// Conflicts `cluster conflicts` lists by default (the server's default too).
const DEFAULT_CONFLICTS_LIMIT: u32 = 100;
/// The most conflicts one request may ask for (the log keeps this many).
const MAX_CONFLICTS_LIMIT: u32 = 10_000;

/// A session file larger than this is not a session token (a token holds a
/// number per node).
const MAX_SESSION_FILE_BYTES: u64 = 64 * 1024;

/// The exit status of a compare-and-set whose comparison failed.
const EXIT_COMPARE_FAILED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "capkv",
    version,
    about = "Command-line client for capkv, the replicated store for sensor readings.",
    after_help = "TIME is RFC 3339 (2026-11-21T10:00:00Z, 2026-11-21T12:00:00+02:00), `now`, \
                  `now-<duration>` (now-1h, now-15m30s) or epoch milliseconds.\n\
                  VERSION is physical_ms.logical@origin_node, as printed (1795255200123.0@1).\n\
                  Write levels (--consistency on reading put, put, delete): strong (default), \
                  local, strong-or-local, strong-or-local:<ms>.\n\
                  Read levels (--consistency on reading latest, reading range, get): \
                  linearizable (default; session with --session-file), session, \
                  bounded:<ms>, eventual.\n\
                  Exit codes: 0 success, 1 error (message on stderr), 2 usage error, \
                  3 comparison failed (cas)."
)]
struct Cli {
    /// Node addresses, host:port, comma separated.
    #[arg(
        long,
        env = "CAPKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = DEFAULT_ENDPOINTS,
        global = true
    )]
    endpoints: Vec<String>,

    /// Send every request to exactly this node (host:port): no redirect to
    /// the leader, no other node. For example, to write LOCAL to a chosen
    /// node or to see what one side of a partition answers.
    /// Conflicts with a typed --endpoints (CAPKV_ENDPOINTS is ignored).
    #[arg(long, value_name = "ADDR", global = true)]
    endpoint: Option<String>,

    /// Deadline of the whole command in milliseconds, retries included.
    #[arg(
        long,
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..=MAX_CALL_TIMEOUT_MS),
        global = true
    )]
    timeout_ms: u64,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,

    /// Keep a session token in this JSON file ({"commit_index": N,
    /// "provisional_seq": {"3": 7}}): data commands load it (if the file
    /// exists), send it, and write back the merged token after they succeed.
    /// Reads then default to `session` consistency: they see the writes made
    /// with the same file, on any node.
    #[arg(long, value_name = "PATH", global = true)]
    session_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// `--consistency` of a write command.
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WriteArgs {
    /// strong (default), local, strong-or-local or strong-or-local:<ms> (how
    /// long the STRONG attempt may take before the write is stored as LOCAL).
    #[arg(long, value_name = "LEVEL", value_parser = parse_write_level)]
    consistency: Option<WriteLevel>,
}

/// `--consistency` of a read command.
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ReadArgs {
    /// linearizable (default; session with --session-file), session,
    /// bounded:<ms> (at most that far behind the leader) or eventual.
    #[arg(long, value_name = "LEVEL", value_parser = parse_read_level)]
    consistency: Option<ReadLevel>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sensor readings: store, latest, time range.
    #[command(subcommand)]
    Reading(ReadingCommand),
    /// Store a value under a key (both UTF-8 strings).
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        level: WriteArgs,
    },
    /// Print a key's value (UTF-8, invalid bytes replaced).
    ///
    /// A key that does not exist (never written, or deleted) prints
    /// `(not found)` and exits 0: absence is an answer, not an error.
    Get {
        key: String,
        #[command(flatten)]
        level: ReadArgs,
    },
    /// Delete a key (writes a tombstone).
    Delete {
        key: String,
        #[command(flatten)]
        level: WriteArgs,
    },
    /// Compare-and-set: store VALUE only if the key is still at the expected
    /// version (or absent). STRONG, through the leader.
    ///
    /// Exits 0 when the value was stored; when the comparison failed, prints
    /// `compare failed: current version ...` on stderr and exits 3.
    #[command(group(
        ArgGroup::new("expected")
            .required(true)
            .args(["expect_version", "expect_absent"])
    ))]
    Cas {
        key: String,
        value: String,
        /// The key's current version, physical_ms.logical@origin_node as
        /// printed by put/get (for example 1795255200123.0@1).
        #[arg(long, value_name = "VERSION", value_parser = parse_version_arg)]
        expect_version: Option<proto::Version>,
        /// The key has no live value (never written, or deleted).
        #[arg(long)]
        expect_absent: bool,
    },
    /// Cluster administration: init, membership, status, conflicts.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand, Debug)]
enum ReadingCommand {
    /// Store one reading.
    Put {
        sensor: String,
        /// A finite number (NaN and infinities are rejected).
        #[arg(allow_negative_numbers = true, value_parser = parse_finite_value)]
        value: f64,
        /// The reading's time (TIME); default now.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        ts: Option<i64>,
        /// A tag, key=value; repeat for several.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        #[command(flatten)]
        level: WriteArgs,
    },
    /// Print the newest reading of a sensor.
    Latest {
        sensor: String,
        #[command(flatten)]
        level: ReadArgs,
    },
    /// Print the readings of a sensor in a time range, oldest first.
    Range {
        sensor: String,
        /// Inclusive start (TIME); default the first reading.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        from: Option<i64>,
        /// Inclusive end (TIME); default the last reading.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        to: Option<i64>,
        /// The most readings to print, across pages.
        #[arg(
            long,
            default_value_t = DEFAULT_RANGE_LIMIT,
            value_parser = clap::value_parser!(u64).range(1..=MAX_RANGE_LIMIT)
        )]
        limit: u64,
        /// Newest first.
        #[arg(long)]
        desc: bool,
        #[command(flatten)]
        level: ReadArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Form the cluster. Safe to repeat: says "already initialized" and
    /// exits 0 when it was.
    Init {
        /// The voters, id=host:port, comma separated; default the node's
        /// --peers. Sent to the first endpoint.
        #[arg(long, value_delimiter = ',', value_name = "ID=ADDR", value_parser = parse_member)]
        members: Vec<(u64, String)>,
    },
    /// Add a non-voting member.
    AddLearner {
        id: u64,
        addr: String,
        /// Wait until the learner has caught up with the leader's log.
        #[arg(long)]
        blocking: bool,
    },
    /// Set the complete set of voters (ids of existing members).
    ChangeMembership {
        #[arg(required = true, num_args = 1..)]
        ids: Vec<u64>,
        /// Keep removed voters as learners.
        #[arg(long)]
        retain: bool,
    },
    /// Every node's view: role, term, leader, log indexes, provisional writes
    /// not yet reconciled, conflicts recorded. Unreachable nodes are listed
    /// with their error.
    Status,
    /// The conflict log: LOCAL writes that lost to a newer version when they
    /// were reconciled, most recent first, and how many were recorded ever.
    Conflicts {
        /// The most conflicts to list.
        #[arg(
            long,
            default_value_t = DEFAULT_CONFLICTS_LIMIT,
            value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONFLICTS_LIMIT))
        )]
        limit: u32,
    },
}

/// What a command prints and how it exits.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answer {
    /// The answer itself (text or JSON), on stdout.
    stdout: String,
    /// Remarks about the answer, one per line on stderr after it (for
    /// example that a read includes provisional data).
    notes: Vec<String>,
    /// 0, or [`EXIT_COMPARE_FAILED`].
    exit: u8,
}

impl Answer {
    fn ok(stdout: String) -> Answer {
        Answer {
            stdout,
            ..Answer::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = parse_cli(std::env::args_os()).unwrap_or_else(|error| error.exit());
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(answer) => finish(&answer),
        Err(error) => fail(&format!("{error:#}")),
    }
}

/// Parses the command line. `--endpoint` conflicts with `--endpoints` typed on
/// the command line, but not with `CAPKV_ENDPOINTS` (which clap's own
/// conflict check would count): an exported default must not stop a user from
/// pinning one node.
fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let typed_endpoints = matches.value_source("endpoints") == Some(ValueSource::CommandLine);
    if typed_endpoints && matches.get_one::<String>("endpoint").is_some() {
        return Err(command.error(
            clap::error::ErrorKind::ArgumentConflict,
            "--endpoint (exactly one node) cannot be used with --endpoints",
        ));
    }
    Cli::from_arg_matches(&matches).map_err(|error| error.format(&mut command))
}

/// Logs go to stderr, off unless `RUST_LOG` asks (`RUST_LOG=capkv_client=debug`
/// shows every retry).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}");
    ExitCode::from(1)
}

/// Writes the answer, then its notes; a closed pipe (`capkv ... | head`) is
/// not an error.
fn finish(answer: &Answer) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(answer.stdout.as_bytes())
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => return fail(&format!("writing the output: {error}")),
    }
    let mut stderr = std::io::stderr().lock();
    for note in &answer.notes {
        let _ = writeln!(stderr, "{note}");
    }
    ExitCode::from(answer.exit)
}

/// Runs the command and returns what to print.
async fn run(cli: Cli) -> anyhow::Result<Answer> {
    let (endpoints, pin_endpoint) = match &cli.endpoint {
        Some(addr) => (vec![addr.clone()], true),
        None => (cli.endpoints.clone(), false),
    };
    let config = ClientConfig {
        timeout: Duration::from_millis(cli.timeout_ms),
        pin_endpoint,
        ..ClientConfig::default()
    };
    let client = Client::with_config(endpoints, config)?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Cluster(command) => run_cluster(&client, command, json).await,
        command => {
            let session = match &cli.session_file {
                Some(path) => Some(Session::from_token(&client, load_token(path)?)),
                None => None,
            };
            let handle = match &session {
                Some(session) => Handle::Session(session.clone()),
                None => Handle::Plain(client),
            };
            let answer = run_data(&handle, command, json).await?;
            if let (Some(path), Some(session)) = (&cli.session_file, &session) {
                save_token(path, &session.token())?;
            }
            Ok(answer)
        }
    }
}

/// A plain client, or a session that carries the `--session-file` token.
#[derive(Clone, Debug)]
enum Handle {
    Plain(Client),
    Session(Session),
}

/// Calls the same method on either kind of handle.
macro_rules! on_handle {
    ($handle:expr, $bound:ident => $call:expr) => {
        match $handle {
            Handle::Plain($bound) => $call,
            Handle::Session($bound) => $call,
        }
    };
}

impl Handle {
    /// This handle with reads at `level`; unchanged without one (plain
    /// clients read `linearizable`, sessions `session`).
    fn reading(&self, level: ReadArgs) -> Handle {
        match (self, level.consistency) {
            (_, None) => self.clone(),
            (Handle::Plain(client), Some(level)) => Handle::Plain(client.with_read_level(level)),
            (Handle::Session(session), Some(level)) => {
                Handle::Session(session.with_read_level(level))
            }
        }
    }

    /// This handle with writes at `level`; unchanged without one (`strong`).
    fn writing(&self, level: WriteArgs) -> Handle {
        match (self, level.consistency) {
            (_, None) => self.clone(),
            (Handle::Plain(client), Some(level)) => Handle::Plain(client.with_write_level(level)),
            (Handle::Session(session), Some(level)) => {
                Handle::Session(session.with_write_level(level))
            }
        }
    }

    fn write_level(&self) -> WriteLevel {
        on_handle!(self, handle => handle.write_level())
    }
}

async fn run_data(handle: &Handle, command: Command, json: bool) -> anyhow::Result<Answer> {
    let answer = match command {
        Command::Reading(command) => run_reading(handle, command, json).await?,
        Command::Put { key, value, level } => {
            let handle = handle.writing(level);
            let response = on_handle!(&handle, h => h.put(key.as_bytes(), value.as_bytes()).await)?;
            let meta = response.meta.as_ref();
            Answer::ok(if json {
                render_json(&json!({
                    "key": key,
                    "version": version_json(response.version.as_ref()),
                    "meta": meta_json(meta, Kind::Write),
                }))?
            } else {
                format!(
                    "ok version={}{}\n",
                    version_text(response.version.as_ref()),
                    write_remarks(handle.write_level(), meta)
                )
            })
        }
        Command::Get { key, level } => {
            let handle = handle.reading(level);
            let response = on_handle!(&handle, h => h.get(key.as_bytes()).await)?;
            let meta = response.meta.as_ref();
            let value = response
                .found
                .then(|| String::from_utf8_lossy(&response.value).into_owned());
            read_answer(
                if json {
                    render_json(&json!({
                        "key": key,
                        "found": response.found,
                        "value": value,
                        "version": version_json(response.version.as_ref()),
                        "meta": meta_json(meta, Kind::Read),
                    }))?
                } else {
                    format!("{}\n", value.as_deref().unwrap_or("(not found)"))
                },
                meta,
                json,
            )
        }
        Command::Delete { key, level } => {
            let handle = handle.writing(level);
            let response = on_handle!(&handle, h => h.delete(key.as_bytes()).await)?;
            let meta = response.meta.as_ref();
            Answer::ok(if json {
                render_json(&json!({
                    "key": key,
                    "existed": response.existed,
                    "version": version_json(response.version.as_ref()),
                    "meta": meta_json(meta, Kind::Write),
                }))?
            } else {
                let what = if response.existed {
                    "deleted"
                } else {
                    "(not found)"
                };
                format!(
                    "{what} tombstone version={}{}\n",
                    version_text(response.version.as_ref()),
                    write_remarks(handle.write_level(), meta)
                )
            })
        }
        Command::Cas {
            key,
            value,
            expect_version,
            expect_absent: _,
        } => {
            // clap's "expected" group makes exactly one of the two present.
            let expected = expect_version.map_or(Expected::Absent, Expected::Version);
            let response = on_handle!(
                handle,
                h => h.compare_and_set(key.as_bytes(), expected, value.as_bytes()).await
            )?;
            cas_answer(&key, &response, handle.write_level(), json)?
        }
        Command::Cluster(command) => {
            anyhow::bail!("internal error: cluster command {command:?} routed as a data command")
        }
    };
    Ok(answer)
}

async fn run_reading(
    handle: &Handle,
    command: ReadingCommand,
    json: bool,
) -> anyhow::Result<Answer> {
    match command {
        ReadingCommand::Put {
            sensor,
            value,
            ts,
            tags,
            level,
        } => {
            if tags.len() > MAX_TAGS {
                anyhow::bail!("at most {MAX_TAGS} tags per reading, got {}", tags.len());
            }
            let handle = handle.writing(level);
            let mut reading = proto::Reading {
                sensor_id: sensor,
                timestamp_ms: ts.unwrap_or_else(now_ms),
                value,
                tags: tags.into_iter().collect::<HashMap<_, _>>(),
                version: None,
            };
            let response = on_handle!(&handle, h => h.put_readings(vec![reading.clone()]).await)?;
            reading.version = response.versions.first().copied();
            let meta = response.meta.as_ref();
            Ok(Answer::ok(if json {
                let mut object = reading_json(&reading);
                object["meta"] = meta_json(meta, Kind::Write);
                render_json(&object)?
            } else {
                format!(
                    "{}{}\n",
                    reading_text(&reading),
                    write_remarks(handle.write_level(), meta)
                )
            }))
        }
        ReadingCommand::Latest { sensor, level } => {
            let handle = handle.reading(level);
            let response = on_handle!(&handle, h => h.latest_reading(sensor.as_str()).await)?;
            let meta = response.meta.as_ref();
            let stdout = if json {
                render_json(&json!({
                    "sensor_id": sensor,
                    "found": response.reading.is_some(),
                    "reading": response.reading.as_ref().map(reading_json),
                    "meta": meta_json(meta, Kind::Read),
                }))?
            } else {
                match &response.reading {
                    Some(reading) => format!("{}\n", reading_text(reading)),
                    None => "(no readings)\n".to_string(),
                }
            };
            Ok(read_answer(stdout, meta, json))
        }
        ReadingCommand::Range {
            sensor,
            from,
            to,
            limit,
            desc,
            level,
        } => {
            let handle = handle.reading(level);
            let query = RangeQuery {
                sensor_id: sensor.clone(),
                from_ms: from,
                to_ms: to,
                limit: 0, // the server's page size; the total is `limit`
                descending: desc,
                page_token: Vec::new(),
            };
            let max_total = usize::try_from(limit).context("--limit too large")?;
            let response = on_handle!(&handle, h => h.range_readings_all(query, max_total).await)?;
            let more = !response.next_page_token.is_empty();
            let meta = response.meta.as_ref();
            if json {
                let stdout = render_json(&json!({
                    "sensor_id": sensor,
                    "count": response.readings.len(),
                    "readings": response.readings.iter().map(reading_json).collect::<Vec<_>>(),
                    "more": more,
                    "meta": meta_json(meta, Kind::Read),
                }))?;
                Ok(read_answer(stdout, meta, json))
            } else {
                let stdout = response
                    .readings
                    .iter()
                    .map(|r| format!("{}\n", reading_text(r)))
                    .collect();
                let mut answer = read_answer(stdout, meta, json);
                if more {
                    answer.notes.push(format!(
                        "note: stopped at --limit {limit}; more readings exist"
                    ));
                }
                Ok(answer)
            }
        }
    }
}

async fn run_cluster(
    client: &Client,
    command: ClusterCommand,
    json: bool,
) -> anyhow::Result<Answer> {
    let stdout = match command {
        ClusterCommand::Init { members } => {
            let response = client.init(members).await?;
            if json {
                render_json(&json!({
                    "already_initialized": response.already_initialized,
                    "voters": members_json(&response.voters),
                }))?
            } else {
                let what = if response.already_initialized {
                    "already initialized"
                } else {
                    "initialized"
                };
                format!("{what}; voters: {}\n", members_text(&response.voters))
            }
        }
        ClusterCommand::AddLearner { id, addr, blocking } => {
            let response = client.add_learner(id, addr, blocking).await?;
            membership_output(&response, json)?
        }
        ClusterCommand::ChangeMembership { ids, retain } => {
            let response = client.change_membership(ids, retain).await?;
            membership_output(&response, json)?
        }
        ClusterCommand::Status => {
            let cluster = client.cluster_status().await?;
            if json {
                render_json(&cluster_json(&cluster))?
            } else {
                cluster_text(&cluster)
            }
        }
        ClusterCommand::Conflicts { limit } => {
            let response = client.list_conflicts(limit).await?;
            if json {
                render_json(&conflicts_json(&response))?
            } else {
                conflicts_text(&response)
            }
        }
    };
    Ok(Answer::ok(stdout))
}

/// A read's answer: in text output, a note on stderr when it includes
/// provisional data (stdout stays the bare value, for scripts); JSON says so
/// in `meta`.
fn read_answer(stdout: String, meta: Option<&proto::ResponseMeta>, json: bool) -> Answer {
    let mut answer = Answer::ok(stdout);
    if !json && meta.is_some_and(|meta| meta.includes_provisional) {
        answer.notes.push("(includes provisional data)".to_string());
    }
    answer
}

/// A compare-and-set's answer: exit 3 and a note on stderr when the
/// comparison failed.
fn cas_answer(
    key: &str,
    response: &proto::CompareAndSetResponse,
    level: WriteLevel,
    json: bool,
) -> anyhow::Result<Answer> {
    let meta = response.meta.as_ref();
    let version = response.version.as_ref();
    let stdout = if json {
        let current_value = (!response.succeeded && response.current_found)
            .then(|| String::from_utf8_lossy(&response.current_value).into_owned());
        render_json(&json!({
            "key": key,
            "succeeded": response.succeeded,
            "version": version_json(version),
            "current_found": response.current_found,
            "current_value": current_value,
            "meta": meta_json(meta, Kind::Write),
        }))?
    } else if response.succeeded {
        format!(
            "ok version={}{}\n",
            version_text(version),
            write_remarks(level, meta)
        )
    } else {
        String::new()
    };
    let mut answer = Answer::ok(stdout);
    if !response.succeeded {
        let state = if response.current_found {
            format!(
                "value {:?}",
                String::from_utf8_lossy(&response.current_value)
            )
        } else if version.is_some() {
            "deleted".to_string()
        } else {
            "never written".to_string()
        };
        answer.notes.push(format!(
            "compare failed: current version {} ({state})",
            version_text(version)
        ));
        answer.exit = EXIT_COMPARE_FAILED;
    }
    Ok(answer)
}

// ----- session files -------------------------------------------------------

/// The token saved in `path`, or an empty one when the file does not exist
/// (or is empty): the first command of a session creates it.
fn load_token(path: &Path) -> anyhow::Result<proto::SessionToken> {
    let context = || format!("reading session file {}", path.display());
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(proto::SessionToken::default())
        }
        Err(error) => return Err(error).with_context(context),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_SESSION_FILE_BYTES + 1),
        &mut text,
    )
    .with_context(context)?;
    if text.len() as u64 > MAX_SESSION_FILE_BYTES {
        anyhow::bail!(
            "{}: larger than {MAX_SESSION_FILE_BYTES} bytes; not a session token",
            context()
        );
    }
    if text.trim().is_empty() {
        return Ok(proto::SessionToken::default());
    }
    let value: Value = serde_json::from_str(&text).with_context(context)?;
    token_from_json(&value).map_err(|reason| anyhow::anyhow!("{}: {reason}", context()))
}

/// Replaces `path` with the token atomically: a temporary file in the same
/// directory, flushed, then renamed over it, so a crash leaves the old token
/// or the new one, never half of one.
fn save_token(path: &Path, token: &proto::SessionToken) -> anyhow::Result<()> {
    let context = || format!("writing session file {}", path.display());
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp_path = path.with_file_name(temp_name);
    let mut text = render_json(&token_json(token))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let written = std::fs::File::create(&temp_path).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| std::fs::rename(&temp_path, path)) {
        let _ = std::fs::remove_file(&temp_path);
        return Err(error).with_context(context);
    }
    Ok(())
}

/// `{"commit_index": N, "provisional_seq": {"3": 7}}`; missing fields are
/// zero/empty, other fields are ignored.
fn token_from_json(value: &Value) -> Result<proto::SessionToken, String> {
    let object = value.as_object().ok_or(
        "expected a JSON object like {\"commit_index\": 12, \"provisional_seq\": {\"3\": 7}}",
    )?;
    let commit_index = match object.get("commit_index") {
        None | Some(Value::Null) => 0,
        Some(number) => number
            .as_u64()
            .ok_or("commit_index must be a non-negative integer")?,
    };
    let mut provisional_seq = HashMap::new();
    match object.get("provisional_seq") {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (origin, seq) in entries {
                let origin: u64 = origin
                    .parse()
                    .map_err(|_| format!("provisional_seq key {origin:?} is not a node id"))?;
                let seq = seq.as_u64().ok_or_else(|| {
                    format!("provisional_seq of node {origin} must be a non-negative integer")
                })?;
                provisional_seq.insert(origin, seq);
            }
        }
        Some(_) => return Err("provisional_seq must be an object of node id to seq".into()),
    }
    Ok(proto::SessionToken {
        commit_index,
        provisional_seq,
    })
}

// ----- argument parsers (errors here are usage errors: exit 2) -------------

fn parse_write_level(text: &str) -> Result<WriteLevel, String> {
    text.parse()
        .map_err(|error: capkv_client::ParseLevelError| error.to_string())
}

fn parse_read_level(text: &str) -> Result<ReadLevel, String> {
    text.parse()
        .map_err(|error: capkv_client::ParseLevelError| error.to_string())
}

/// The inverse of [`version_text`]: `physical_ms.logical@origin_node`.
fn parse_version_arg(text: &str) -> Result<proto::Version, String> {
    let invalid = || {
        format!(
            "{text:?} is not a version; expected physical_ms.logical@origin_node as printed \
             by capkv (for example 1795255200123.0@1)"
        )
    };
    let (stamp, origin) = text.trim().split_once('@').ok_or_else(invalid)?;
    let (physical, logical) = stamp.split_once('.').ok_or_else(invalid)?;
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !(digits(physical) && digits(logical) && digits(origin)) {
        return Err(invalid());
    }
    Ok(proto::Version {
        physical_ms: physical.parse().map_err(|_| invalid())?,
        logical: logical.parse().map_err(|_| invalid())?,
        origin_node: origin.parse().map_err(|_| invalid())?,
    })
}

fn parse_finite_value(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() {
        return Err(format!(
            "{text:?} is not a finite number; NaN and infinities cannot be stored"
        ));
    }
    Ok(value)
}

fn parse_time_arg(text: &str) -> Result<i64, String> {
    parse_time(text, now_ms()).map_err(|error| error.to_string())
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn parse_member(text: &str) -> Result<(u64, String), String> {
    let invalid = || format!("{text:?} is not ID=HOST:PORT (for example 1=127.0.0.11:7001)");
    let (id, addr) = text.trim().split_once('=').ok_or_else(invalid)?;
    let id: u64 = id.trim().parse().map_err(|_| invalid())?;
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(invalid());
    }
    Ok((id, addr.to_string()))
}

// ----- text output ---------------------------------------------------------

/// `boiler-7 2026-11-21T10:00:00.123Z 81.5 site=north version=1795255200123.0@1`
fn reading_text(reading: &proto::Reading) -> String {
    let mut tags: Vec<(&String, &String)> = reading.tags.iter().collect();
    tags.sort();
    let mut line = format!(
        "{} {} {}",
        reading.sensor_id,
        format_timestamp_ms(reading.timestamp_ms),
        reading.value
    );
    for (key, value) in tags {
        line.push_str(&format!(" {key}={value}"));
    }
    line.push_str(&format!(
        " version={}",
        version_text(reading.version.as_ref())
    ));
    line
}

/// `physical_ms.logical@origin_node`, or `-` when the server sent none.
fn version_text(version: Option<&proto::Version>) -> String {
    match version {
        Some(v) => format!("{}.{}@{}", v.physical_ms, v.logical, v.origin_node),
        None => "-".to_string(),
    }
}

/// What a write's text output adds after the version: whether it was stored
/// provisionally, and why when STRONG was asked for first.
fn write_remarks(requested: WriteLevel, meta: Option<&proto::ResponseMeta>) -> String {
    let Some(meta) = meta else {
        return String::new();
    };
    let provided_local = meta.write_consistency == proto::WriteConsistency::Local as i32;
    let mut remarks = String::new();
    if provided_local && matches!(requested, WriteLevel::StrongOrLocal { .. }) {
        remarks.push_str(" (stored as LOCAL: no quorum within budget)");
    }
    if provided_local {
        match &meta.provisional_write {
            Some(id) => remarks.push_str(&format!(" (provisional write {})", write_id_text(id))),
            None => remarks.push_str(" (provisional write)"),
        }
    }
    remarks
}

/// `origin_node:seq`.
fn write_id_text(id: &proto::WriteId) -> String {
    format!("{}:{}", id.origin_node, id.seq)
}

/// One line per conflict, then the total:
/// `config/mode loser=5.0@3 (write 3:7) winner=6.0@1 log_index=42`.
fn conflicts_text(response: &proto::ListConflictsResponse) -> String {
    let mut text = String::new();
    for conflict in &response.conflicts {
        let what = if conflict.key.is_empty() {
            format!(
                "{}@{}",
                conflict.sensor_id,
                format_timestamp_ms(conflict.timestamp_ms)
            )
        } else {
            String::from_utf8_lossy(&conflict.key).into_owned()
        };
        let write = conflict
            .loser_write
            .as_ref()
            .map_or_else(|| "-".to_string(), write_id_text);
        text.push_str(&format!(
            "{what} loser={} (write {write}) winner={} log_index={}
",
            version_text(conflict.loser.as_ref()),
            version_text(conflict.winner.as_ref()),
            conflict.log_index
        ));
    }
    let shown = response.conflicts.len() as u64;
    if shown < response.total {
        text.push_str(&format!(
            "total: {} (showing the {shown} most recent)\n",
            response.total
        ));
    } else {
        text.push_str(&format!("total: {}\n", response.total));
    }
    text
}

fn members_text(members: &[proto::Member]) -> String {
    if members.is_empty() {
        return "(none)".to_string();
    }
    members
        .iter()
        .map(|m| format!("{}={}", m.id, m.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

fn membership_output(response: &proto::MembershipResponse, json: bool) -> anyhow::Result<String> {
    if json {
        render_json(&json!({
            "voters": members_json(&response.voters),
            "learners": members_json(&response.learners),
            "log_index": response.log_index,
        }))
    } else {
        Ok(format!(
            "voters: {}\nlearners: {}\nlog_index: {}\n",
            members_text(&response.voters),
            members_text(&response.learners),
            response.log_index
        ))
    }
}

fn cluster_text(cluster: &ClusterStatus) -> String {
    let dash = || "-".to_string();
    let header = [
        "id",
        "addr",
        "role",
        "term",
        "leader",
        "last_log",
        "commit",
        "applied",
        "snapshot",
        "pending",
        "oldest_ms",
        "conflicts",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for node in &cluster.nodes {
        let id = node.id.map_or_else(dash, |id| id.to_string());
        let row = match &node.status {
            Some(s) => vec![
                id,
                node.addr.clone(),
                s.role.clone(),
                s.term.to_string(),
                if s.leader_id == 0 {
                    dash()
                } else {
                    s.leader_id.to_string()
                },
                s.last_log_index.to_string(),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                s.snapshot_index.to_string(),
                s.pending_provisional.to_string(),
                s.oldest_pending_age_ms
                    .map_or_else(dash, |age| age.to_string()),
                s.conflicts_recorded.to_string(),
            ],
            None => {
                let mut row = vec![id, node.addr.clone(), "unreachable".to_string()];
                row.resize(header.len(), dash());
                row
            }
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let leader = cluster
        .leader
        .map_or_else(|| "none".to_string(), |id| id.to_string());
    let mut text = format!("leader: {leader}  term: {}\n", cluster.term);
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    for error in cluster.nodes.iter().filter_map(|n| n.error_with_addr()) {
        text.push_str(&error);
        text.push('\n');
    }
    text
}

// ----- JSON output (prost types have no serde, so built by hand) -----------

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
}

fn render_json(value: &Value) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    Ok(text)
}

fn version_json(version: Option<&proto::Version>) -> Value {
    match version {
        Some(v) => json!({
            "physical_ms": v.physical_ms,
            "logical": v.logical,
            "origin_node": v.origin_node,
        }),
        None => Value::Null,
    }
}

fn meta_json(meta: Option<&proto::ResponseMeta>, kind: Kind) -> Value {
    let Some(meta) = meta else {
        return Value::Null;
    };
    let mut object = json!({
        "served_by": meta.served_by,
        "applied_index": meta.applied_index,
        "term": meta.term,
        "includes_provisional": meta.includes_provisional,
        "staleness_ms": meta.staleness_ms,
        "provisional_write": meta.provisional_write.as_ref().map(write_id_json),
        "session": meta.session.as_ref().map(token_json),
    });
    match kind {
        Kind::Write => {
            object["write_consistency"] = json!(write_consistency_name(meta.write_consistency));
        }
        Kind::Read => {
            object["read_consistency"] = json!(read_consistency_name(meta.read_consistency));
        }
    }
    object
}

/// `{"commit_index": N, "provisional_seq": {"3": 7}}`, origins in order: the
/// shape of `meta.session` and of a session file.
fn token_json(token: &proto::SessionToken) -> Value {
    json!({
        "commit_index": token.commit_index,
        "provisional_seq": seq_map_json(&token.provisional_seq),
    })
}

/// A map of node id to seq as a JSON object with decimal keys, sorted.
fn seq_map_json(map: &HashMap<u64, u64>) -> Value {
    let mut entries: Vec<(&u64, &u64)> = map.iter().collect();
    entries.sort();
    Value::Object(
        entries
            .into_iter()
            .map(|(node, seq)| (node.to_string(), json!(seq)))
            .collect(),
    )
}

fn write_id_json(id: &proto::WriteId) -> Value {
    json!({"origin_node": id.origin_node, "seq": id.seq})
}

fn conflicts_json(response: &proto::ListConflictsResponse) -> Value {
    let conflicts: Vec<Value> = response
        .conflicts
        .iter()
        .map(|c| {
            let is_reading = c.key.is_empty();
            json!({
                "key": (!is_reading).then(|| String::from_utf8_lossy(&c.key).into_owned()),
                "sensor_id": is_reading.then(|| c.sensor_id.clone()),
                "timestamp_ms": is_reading.then_some(c.timestamp_ms),
                "loser": version_json(c.loser.as_ref()),
                "loser_write": c.loser_write.as_ref().map(write_id_json),
                "winner": version_json(c.winner.as_ref()),
                "log_index": c.log_index,
            })
        })
        .collect();
    json!({
        "total": response.total,
        "conflicts": conflicts,
    })
}

fn reading_json(reading: &proto::Reading) -> Value {
    json!({
        "sensor_id": reading.sensor_id,
        "timestamp_ms": reading.timestamp_ms,
        "time": format_timestamp_ms(reading.timestamp_ms),
        "value": reading.value,
        "tags": reading.tags,
        "version": version_json(reading.version.as_ref()),
    })
}

fn members_json(members: &[proto::Member]) -> Value {
    members
        .iter()
        .map(|m| json!({"id": m.id, "addr": m.addr}))
        .collect()
}

fn cluster_json(cluster: &ClusterStatus) -> Value {
    let nodes: Vec<Value> = cluster
        .nodes
        .iter()
        .map(|node| {
            let s = node.status.as_ref();
            json!({
                "id": node.id,
                "addr": node.addr,
                "reachable": node.reachable(),
                "role": s.map(|s| s.role.clone()),
                "term": s.map(|s| s.term),
                "leader_id": s.and_then(|s| (s.leader_id != 0).then_some(s.leader_id)),
                "leader_addr": s.and_then(|s| (!s.leader_addr.is_empty()).then(|| s.leader_addr.clone())),
                "last_log_index": s.map(|s| s.last_log_index),
                "commit_index": s.map(|s| s.commit_index),
                "applied_index": s.map(|s| s.applied_index),
                "snapshot_index": s.map(|s| s.snapshot_index),
                "purged_index": s.map(|s| s.purged_index),
                "millis_since_quorum_ack": s.and_then(|s| s.millis_since_quorum_ack),
                "leader_contact_age_ms": s.and_then(|s| s.leader_contact_age_ms),
                "pending_provisional": s.map(|s| s.pending_provisional),
                "oldest_pending_age_ms": s.and_then(|s| s.oldest_pending_age_ms),
                "conflicts_recorded": s.map(|s| s.conflicts_recorded),
                "reconciled_seq": s.map(|s| seq_map_json(&s.reconciled_seq)),
                "voters": s.map(|s| members_json(&s.voters)),
                "learners": s.map(|s| members_json(&s.learners)),
                "error": node.error,
            })
        })
        .collect();
    json!({
        "leader": cluster.leader,
        "term": cluster.term,
        "nodes": nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capkv_client::NodeReport;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_cli(std::iter::once("capkv").chain(args.iter().copied()))
    }

    #[test]
    fn reading_put_parses_values_times_and_tags() {
        let cli = parse(&[
            "reading",
            "put",
            "boiler-7",
            "-3.5",
            "--ts",
            "2026-11-21T10:00:00.123Z",
            "--tag",
            "site=north",
            "--tag",
            "unit=C",
        ])
        .expect("valid");
        match cli.command {
            Command::Reading(ReadingCommand::Put {
                sensor,
                value,
                ts,
                tags,
                level,
            }) => {
                assert_eq!(level, WriteArgs::default());
                assert_eq!(sensor, "boiler-7");
                assert_eq!(value, -3.5);
                assert_eq!(ts, Some(1_795_255_200_123));
                assert_eq!(
                    tags,
                    [
                        ("site".to_string(), "north".to_string()),
                        ("unit".to_string(), "C".to_string())
                    ]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_finite_values_and_bad_times_are_usage_errors() {
        for args in [
            &["reading", "put", "s", "NaN"][..],
            &["reading", "put", "s", "inf"],
            &["reading", "put", "s", "-infinity"],
            &["reading", "put", "s", "1e400"],
            &["reading", "put", "s", "abc"],
            &["reading", "put", "s", "1", "--ts", "yesterday"],
            &["reading", "put", "s", "1", "--tag", "novalue"],
            &["reading", "range", "s", "--limit", "0"],
            &["cluster", "init", "--members", "1:127.0.0.11:7001"],
            &["cluster", "change-membership"],
            &["--timeout-ms", "0", "get", "k"],
            &["--output", "yaml", "get", "k"],
            &["cluster", "conflicts", "--limit", "0"],
            &["cluster", "conflicts", "--limit", "10001"],
        ] {
            let error = parse(args).expect_err(&format!("{args:?} should be rejected"));
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn global_flags_and_member_lists_parse() {
        let cli = parse(&[
            "cluster",
            "init",
            "--members",
            "1=127.0.0.11:7001,2=127.0.0.12:7002",
            "--output",
            "json",
            "--endpoints",
            "a:1,b:2",
        ])
        .expect("valid");
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        match cli.command {
            Command::Cluster(ClusterCommand::Init { members }) => assert_eq!(
                members,
                [
                    (1, "127.0.0.11:7001".to_string()),
                    (2, "127.0.0.12:7002".to_string())
                ]
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reading_text_is_one_line_with_sorted_tags() {
        let reading = proto::Reading {
            sensor_id: "boiler-7".into(),
            timestamp_ms: 1_795_255_200_123,
            value: 81.5,
            tags: HashMap::from([("z".into(), "1".into()), ("a".into(), "2".into())]),
            version: Some(proto::Version {
                physical_ms: 1_795_255_200_123,
                logical: 0,
                origin_node: 1,
            }),
        };
        assert_eq!(
            reading_text(&reading),
            "boiler-7 2026-11-21T10:00:00.123Z 81.5 a=2 z=1 version=1795255200123.0@1"
        );
    }

    #[test]
    fn cluster_json_has_the_documented_fields() {
        let cluster = ClusterStatus {
            leader: Some(1),
            term: 3,
            nodes: vec![
                NodeReport {
                    id: Some(1),
                    addr: "n1:7001".into(),
                    status: Some(proto::NodeStatus {
                        id: 1,
                        role: "leader".into(),
                        term: 3,
                        leader_id: 1,
                        last_log_index: 9,
                        pending_provisional: 4,
                        oldest_pending_age_ms: Some(1500),
                        conflicts_recorded: 2,
                        leader_contact_age_ms: Some(20),
                        reconciled_seq: HashMap::from([(3, 7), (1, 9)]),
                        ..proto::NodeStatus::default()
                    }),
                    error: None,
                },
                NodeReport {
                    id: Some(2),
                    addr: "n2:7002".into(),
                    status: None,
                    error: Some("transport error: refused".into()),
                },
            ],
        };
        let value = cluster_json(&cluster);
        assert_eq!(value["leader"], 1);
        assert_eq!(value["term"], 3);
        let up = &value["nodes"][0];
        for field in [
            "id",
            "addr",
            "reachable",
            "role",
            "term",
            "leader_id",
            "last_log_index",
            "commit_index",
            "applied_index",
            "snapshot_index",
            "purged_index",
            "pending_provisional",
            "oldest_pending_age_ms",
            "conflicts_recorded",
            "leader_contact_age_ms",
            "reconciled_seq",
            "error",
        ] {
            assert!(up.get(field).is_some(), "missing {field}");
        }
        assert_eq!(up["pending_provisional"], 4);
        assert_eq!(up["oldest_pending_age_ms"], 1500);
        assert_eq!(up["conflicts_recorded"], 2);
        assert_eq!(up["leader_contact_age_ms"], 20);
        assert_eq!(up["reconciled_seq"], json!({"1": 9, "3": 7}));
        assert_eq!(up["reachable"], true);
        assert_eq!(up["last_log_index"], 9);
        let down = &value["nodes"][1];
        assert_eq!(down["reachable"], false);
        assert_eq!(down["role"], Value::Null);
        assert_eq!(down["error"], "transport error: refused");

        let text = cluster_text(&cluster);
        assert!(text.starts_with("leader: 1  term: 3\n"), "{text}");
        let mut lines = text.lines().skip(1);
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(&header[9..], ["pending", "oldest_ms", "conflicts"]);
        let row: Vec<&str> = lines.next().expect("node 1").split_whitespace().collect();
        assert_eq!(&row[9..], ["4", "1500", "2"]);
        assert!(text.contains("n2:7002  unreachable"), "{text}");
        assert!(text.contains("n2:7002: transport error: refused"), "{text}");
    }

    #[test]
    fn consistency_flags_parse_per_command() {
        let write_level = |args: &[&str]| match parse(args).expect("valid").command {
            Command::Put { level, .. }
            | Command::Delete { level, .. }
            | Command::Reading(ReadingCommand::Put { level, .. }) => level.consistency,
            other => panic!("unexpected {other:?}"),
        };
        let read_level = |args: &[&str]| match parse(args).expect("valid").command {
            Command::Get { level, .. }
            | Command::Reading(ReadingCommand::Latest { level, .. })
            | Command::Reading(ReadingCommand::Range { level, .. }) => level.consistency,
            other => panic!("unexpected {other:?}"),
        };
        let ms = Duration::from_millis;
        assert_eq!(write_level(&["put", "k", "v"]), None);
        assert_eq!(
            write_level(&["put", "k", "v", "--consistency", "local"]),
            Some(WriteLevel::Local)
        );
        assert_eq!(
            write_level(&["delete", "k", "--consistency", "strong"]),
            Some(WriteLevel::Strong)
        );
        assert_eq!(
            write_level(&[
                "reading",
                "put",
                "s",
                "1",
                "--consistency",
                "strong-or-local"
            ]),
            Some(WriteLevel::StrongOrLocal { budget: None })
        );
        assert_eq!(
            write_level(&["put", "k", "v", "--consistency", "strong-or-local:250"]),
            Some(WriteLevel::StrongOrLocal {
                budget: Some(ms(250))
            })
        );
        assert_eq!(read_level(&["get", "k"]), None);
        assert_eq!(
            read_level(&["get", "k", "--consistency", "eventual"]),
            Some(ReadLevel::Eventual)
        );
        assert_eq!(
            read_level(&["reading", "latest", "s", "--consistency", "session"]),
            Some(ReadLevel::Session)
        );
        assert_eq!(
            read_level(&["reading", "range", "s", "--consistency", "bounded:100"]),
            Some(ReadLevel::Bounded {
                max_staleness: ms(100)
            })
        );
        assert_eq!(
            read_level(&["get", "k", "--consistency", "linearizable"]),
            Some(ReadLevel::Linearizable)
        );
    }

    #[test]
    fn bad_consistency_values_are_usage_errors_listing_the_forms() {
        let cases: [(&[&str], &str); 9] = [
            (
                &["put", "k", "v", "--consistency", "eventual"],
                "strong-or-local:<ms>",
            ),
            (
                &["put", "k", "v", "--consistency", "strong-or-local:0"],
                "strong-or-local:<ms>",
            ),
            (
                &["delete", "k", "--consistency", "quorum"],
                "strong-or-local:<ms>",
            ),
            (
                &["reading", "put", "s", "1", "--consistency", "local:3"],
                "strong-or-local:<ms>",
            ),
            (&["get", "k", "--consistency", "local"], "bounded:<ms>"),
            (&["get", "k", "--consistency", "bounded"], "bounded:<ms>"),
            (&["get", "k", "--consistency", "bounded:0"], "bounded:<ms>"),
            (
                &["reading", "latest", "s", "--consistency", "bounded:1s"],
                "bounded:<ms>",
            ),
            (
                &["reading", "range", "s", "--consistency", "strong"],
                "bounded:<ms>",
            ),
        ];
        for (args, form) in cases {
            let error = parse(args).expect_err(&format!("{args:?} should be rejected"));
            assert_eq!(error.exit_code(), 2, "{args:?}");
            let message = error.to_string();
            assert!(message.contains(form), "{args:?}: {message}");
        }
        // A read level is no option of cas, cluster commands have none.
        for args in [
            &["cas", "k", "v", "--expect-absent", "--consistency", "local"][..],
            &["cluster", "status", "--consistency", "eventual"],
        ] {
            assert_eq!(parse(args).expect_err("no such flag").exit_code(), 2);
        }
    }

    #[test]
    fn endpoint_pins_one_node_and_conflicts_with_typed_endpoints() {
        let cli = parse(&["--endpoint", "a:1", "get", "k"]).expect("valid");
        assert_eq!(cli.endpoint.as_deref(), Some("a:1"));
        let cli = parse(&["get", "k", "--endpoint", "a:1"]).expect("global flag");
        assert_eq!(cli.endpoint.as_deref(), Some("a:1"));
        for args in [
            &["--endpoint", "a:1", "--endpoints", "b:2", "get", "k"][..],
            &["get", "k", "--endpoints", "b:2", "--endpoint", "a:1"],
        ] {
            let error = parse(args).expect_err("conflict");
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert!(error.to_string().contains("--endpoint"), "{error}");
        }
    }

    #[test]
    fn cas_needs_exactly_one_expectation() {
        let cli =
            parse(&["cas", "k", "v", "--expect-version", "1795255200123.4@2"]).expect("valid");
        match cli.command {
            Command::Cas {
                expect_version,
                expect_absent,
                ..
            } => {
                assert_eq!(
                    expect_version,
                    Some(proto::Version {
                        physical_ms: 1_795_255_200_123,
                        logical: 4,
                        origin_node: 2,
                    })
                );
                assert!(!expect_absent);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&["cas", "k", "v", "--expect-absent"]).is_ok());
        for args in [
            &["cas", "k", "v"][..],
            &[
                "cas",
                "k",
                "v",
                "--expect-absent",
                "--expect-version",
                "1.0@1",
            ],
            &["cas", "k", "v", "--expect-version", "7@1"],
            &["cas", "k"],
        ] {
            assert_eq!(
                parse(args).expect_err("rejected").exit_code(),
                2,
                "{args:?}"
            );
        }
    }

    #[test]
    fn version_text_round_trips() {
        for version in [
            proto::Version {
                physical_ms: 1_795_255_200_123,
                logical: 0,
                origin_node: 1,
            },
            proto::Version {
                physical_ms: 0,
                logical: 0,
                origin_node: 0,
            },
            proto::Version {
                physical_ms: u64::MAX,
                logical: u32::MAX,
                origin_node: u64::MAX,
            },
        ] {
            let text = version_text(Some(&version));
            assert_eq!(parse_version_arg(&text), Ok(version), "{text}");
        }
        for bad in [
            "",
            "-",
            "7",
            "7.0",
            "7@1",
            "7.0@",
            ".0@1",
            "7.@1",
            "7.0@1@2",
            "7.0.1@1",
            "-7.0@1",
            "+7.0@1",
            "7.0@x",
            "7.4294967296@1",
            "18446744073709551616.0@1",
        ] {
            let error = parse_version_arg(bad).expect_err(bad);
            assert!(error.contains("physical_ms.logical@origin_node"), "{error}");
        }
    }

    #[test]
    fn session_tokens_round_trip_through_json() {
        let token = proto::SessionToken {
            commit_index: 12,
            provisional_seq: HashMap::from([(3, 7), (1, 2)]),
        };
        let value = token_json(&token);
        assert_eq!(
            value,
            json!({"commit_index": 12, "provisional_seq": {"1": 2, "3": 7}})
        );
        assert_eq!(token_from_json(&value), Ok(token));
        assert_eq!(
            token_from_json(&json!({})),
            Ok(proto::SessionToken::default())
        );
        for bad in [
            json!([]),
            json!({"commit_index": -1}),
            json!({"commit_index": "12"}),
            json!({"provisional_seq": []}),
            json!({"provisional_seq": {"three": 7}}),
            json!({"provisional_seq": {"3": 7.5}}),
        ] {
            assert!(token_from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_files_are_created_loaded_and_replaced() {
        let dir = std::env::temp_dir().join(format!("capkv-session-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("session.json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            load_token(&path).expect("missing file"),
            proto::SessionToken::default()
        );
        let token = proto::SessionToken {
            commit_index: 5,
            provisional_seq: HashMap::from([(2, 9)]),
        };
        save_token(&path, &token).expect("save");
        assert_eq!(load_token(&path).expect("load"), token);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("session.json")]);
        std::fs::write(&path, "not json").expect("write");
        let error = load_token(&path).expect_err("garbage");
        assert!(format!("{error:#}").contains("session file"), "{error:#}");
        std::fs::write(&path, " \n").expect("write");
        assert_eq!(
            load_token(&path).expect("empty"),
            proto::SessionToken::default()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn write_meta(level: proto::WriteConsistency, id: Option<(u64, u64)>) -> proto::ResponseMeta {
        proto::ResponseMeta {
            write_consistency: level as i32,
            provisional_write: id.map(|(origin_node, seq)| proto::WriteId { origin_node, seq }),
            ..proto::ResponseMeta::default()
        }
    }

    #[test]
    fn write_text_says_when_a_write_is_provisional() {
        use proto::WriteConsistency::{Local, Strong};
        let fallback = WriteLevel::StrongOrLocal { budget: None };
        // (requested, provided, id, remarks)
        let cases = [
            (WriteLevel::Strong, Strong, None, ""),
            (fallback, Strong, None, ""),
            (
                WriteLevel::Local,
                Local,
                Some((3, 7)),
                " (provisional write 3:7)",
            ),
            (WriteLevel::Local, Local, None, " (provisional write)"),
            (
                fallback,
                Local,
                Some((2, 1)),
                " (stored as LOCAL: no quorum within budget) (provisional write 2:1)",
            ),
        ];
        for (requested, provided, id, remarks) in cases {
            let meta = write_meta(provided, id);
            assert_eq!(
                write_remarks(requested, Some(&meta)),
                remarks,
                "{requested} {provided:?}"
            );
        }
        assert_eq!(write_remarks(WriteLevel::Local, None), "");
    }

    #[test]
    fn meta_json_names_levels_and_provisional_writes() {
        let meta = proto::ResponseMeta {
            served_by: 3,
            write_consistency: proto::WriteConsistency::StrongOrLocal as i32,
            read_consistency: proto::ReadConsistency::Bounded as i32,
            applied_index: 10,
            term: 2,
            includes_provisional: true,
            staleness_ms: None,
            session: Some(proto::SessionToken {
                commit_index: 10,
                provisional_seq: HashMap::from([(3, 7)]),
            }),
            provisional_write: Some(proto::WriteId {
                origin_node: 3,
                seq: 7,
            }),
        };
        let write = meta_json(Some(&meta), Kind::Write);
        assert_eq!(
            write,
            json!({
                "served_by": 3,
                "write_consistency": "STRONG_OR_LOCAL",
                "applied_index": 10,
                "term": 2,
                "includes_provisional": true,
                "staleness_ms": null,
                "provisional_write": {"origin_node": 3, "seq": 7},
                "session": {"commit_index": 10, "provisional_seq": {"3": 7}},
            })
        );
        let read = meta_json(Some(&meta), Kind::Read);
        assert_eq!(read["read_consistency"], "BOUNDED");
        assert!(read.get("write_consistency").is_none());
        let bare = meta_json(Some(&proto::ResponseMeta::default()), Kind::Read);
        assert_eq!(bare["provisional_write"], Value::Null);
        assert_eq!(bare["session"], Value::Null);
    }

    #[test]
    fn conflicts_print_keys_and_readings() {
        let v = |physical_ms: u64, origin_node: u64| {
            Some(proto::Version {
                physical_ms,
                logical: 0,
                origin_node,
            })
        };
        let response = proto::ListConflictsResponse {
            conflicts: vec![
                proto::Conflict {
                    key: b"config/mode".to_vec(),
                    loser: v(5, 3),
                    loser_write: Some(proto::WriteId {
                        origin_node: 3,
                        seq: 7,
                    }),
                    winner: v(6, 1),
                    log_index: 42,
                    ..proto::Conflict::default()
                },
                proto::Conflict {
                    sensor_id: "boiler-7".into(),
                    timestamp_ms: 1_795_255_200_123,
                    loser: v(8, 2),
                    loser_write: Some(proto::WriteId {
                        origin_node: 2,
                        seq: 1,
                    }),
                    winner: v(9, 1),
                    log_index: 40,
                    ..proto::Conflict::default()
                },
            ],
            total: 5,
        };
        assert_eq!(
            conflicts_text(&response),
            "config/mode loser=5.0@3 (write 3:7) winner=6.0@1 log_index=42\n\
             boiler-7@2026-11-21T10:00:00.123Z loser=8.0@2 (write 2:1) winner=9.0@1 log_index=40\n\
             total: 5 (showing the 2 most recent)\n"
        );
        let value = conflicts_json(&response);
        assert_eq!(value["total"], 5);
        assert_eq!(
            value["conflicts"][0],
            json!({
                "key": "config/mode",
                "sensor_id": null,
                "timestamp_ms": null,
                "loser": {"physical_ms": 5, "logical": 0, "origin_node": 3},
                "loser_write": {"origin_node": 3, "seq": 7},
                "winner": {"physical_ms": 6, "logical": 0, "origin_node": 1},
                "log_index": 42,
            })
        );
        assert_eq!(value["conflicts"][1]["key"], Value::Null);
        assert_eq!(value["conflicts"][1]["sensor_id"], "boiler-7");
        assert_eq!(value["conflicts"][1]["timestamp_ms"], 1_795_255_200_123_i64);
        let empty = proto::ListConflictsResponse::default();
        assert_eq!(conflicts_text(&empty), "total: 0\n");
    }
}
