//! `capkv`: the command-line client. Parses flags, calls the SDK, prints the
//! answer as text or JSON. Exit codes: 0 success, 1 any error (printed on
//! stderr as `error: <message>`), 2 usage errors.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use capkv_client::time::{format_timestamp_ms, now_ms, parse_time};
use capkv_client::{
    proto, read_consistency_name, write_consistency_name, Client, ClientConfig, ClusterStatus,
    RangeQuery, MAX_CALL_TIMEOUT_MS,
};
use clap::{Parser, Subcommand, ValueEnum};
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

#[derive(Parser, Debug)]
#[command(
    name = "capkv",
    version,
    about = "Command-line client for capkv, the replicated store for sensor readings.",
    after_help = "TIME is RFC 3339 (2026-11-21T10:00:00Z, 2026-11-21T12:00:00+02:00), `now`, \
                  `now-<duration>` (now-1h, now-15m30s) or epoch milliseconds.\n\
                  Exit codes: 0 success, 1 error (message on stderr), 2 usage error."
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sensor readings: store, latest, time range.
    #[command(subcommand)]
    Reading(ReadingCommand),
    /// Store a value under a key (both UTF-8 strings).
    Put { key: String, value: String },
    /// Print a key's value (UTF-8, invalid bytes replaced).
    ///
    /// A key that does not exist (never written, or deleted) prints
    /// `(not found)` and exits 0: absence is an answer, not an error.
    Get { key: String },
    /// Delete a key (writes a tombstone).
    Delete { key: String },
    /// Cluster administration: init, membership, status.
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
    },
    /// Print the newest reading of a sensor.
    Latest { sensor: String },
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
    /// Every node's view: role, term, leader, log indexes. Unreachable nodes
    /// are listed with their error.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => print_stdout(&output),
        Err(error) => fail(&format!("{error:#}")),
    }
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

/// Writes the answer; a closed pipe (`capkv ... | head`) is not an error.
fn print_stdout(output: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => fail(&format!("writing the output: {error}")),
    }
}

/// Runs the command and returns what to print on stdout.
async fn run(cli: Cli) -> anyhow::Result<String> {
    let config = ClientConfig {
        timeout: Duration::from_millis(cli.timeout_ms),
        ..ClientConfig::default()
    };
    let client = Client::with_config(cli.endpoints.iter().map(|e| e.as_str()), config)?;
    let json = cli.output == Output::Json;
    let output = match cli.command {
        Command::Reading(command) => run_reading(&client, command, json).await?,
        Command::Put { key, value } => {
            let response = client.put(key.as_bytes(), value.as_bytes()).await?;
            if json {
                render_json(&json!({
                    "key": key,
                    "version": version_json(response.version.as_ref()),
                    "meta": meta_json(response.meta.as_ref(), Kind::Write),
                }))?
            } else {
                format!("ok version={}\n", version_text(response.version.as_ref()))
            }
        }
        Command::Get { key } => {
            let response = client.get(key.as_bytes()).await?;
            let value = response
                .found
                .then(|| String::from_utf8_lossy(&response.value).into_owned());
            if json {
                render_json(&json!({
                    "key": key,
                    "found": response.found,
                    "value": value,
                    "version": version_json(response.version.as_ref()),
                    "meta": meta_json(response.meta.as_ref(), Kind::Read),
                }))?
            } else {
                format!("{}\n", value.as_deref().unwrap_or("(not found)"))
            }
        }
        Command::Delete { key } => {
            let response = client.delete(key.as_bytes()).await?;
            if json {
                render_json(&json!({
                    "key": key,
                    "existed": response.existed,
                    "version": version_json(response.version.as_ref()),
                    "meta": meta_json(response.meta.as_ref(), Kind::Write),
                }))?
            } else {
                let what = if response.existed {
                    "deleted"
                } else {
                    "(not found)"
                };
                format!(
                    "{what} tombstone version={}\n",
                    version_text(response.version.as_ref())
                )
            }
        }
        Command::Cluster(command) => run_cluster(&client, command, json).await?,
    };
    Ok(output)
}

async fn run_reading(
    client: &Client,
    command: ReadingCommand,
    json: bool,
) -> anyhow::Result<String> {
    match command {
        ReadingCommand::Put {
            sensor,
            value,
            ts,
            tags,
        } => {
            if tags.len() > MAX_TAGS {
                anyhow::bail!("at most {MAX_TAGS} tags per reading, got {}", tags.len());
            }
            let mut reading = proto::Reading {
                sensor_id: sensor,
                timestamp_ms: ts.unwrap_or_else(now_ms),
                value,
                tags: tags.into_iter().collect::<HashMap<_, _>>(),
                version: None,
            };
            let response = client.put_readings(vec![reading.clone()]).await?;
            reading.version = response.versions.first().copied();
            if json {
                let mut object = reading_json(&reading);
                object["meta"] = meta_json(response.meta.as_ref(), Kind::Write);
                render_json(&object)
            } else {
                Ok(format!("{}\n", reading_text(&reading)))
            }
        }
        ReadingCommand::Latest { sensor } => {
            let response = client.latest_reading(sensor.as_str()).await?;
            if json {
                render_json(&json!({
                    "sensor_id": sensor,
                    "found": response.reading.is_some(),
                    "reading": response.reading.as_ref().map(reading_json),
                    "meta": meta_json(response.meta.as_ref(), Kind::Read),
                }))
            } else {
                Ok(match &response.reading {
                    Some(reading) => format!("{}\n", reading_text(reading)),
                    None => "(no readings)\n".to_string(),
                })
            }
        }
        ReadingCommand::Range {
            sensor,
            from,
            to,
            limit,
            desc,
        } => {
            let query = RangeQuery {
                sensor_id: sensor.clone(),
                from_ms: from,
                to_ms: to,
                limit: 0, // the server's page size; the total is `limit`
                descending: desc,
                page_token: Vec::new(),
            };
            let max_total = usize::try_from(limit).context("--limit too large")?;
            let response = client.range_readings_all(query, max_total).await?;
            let more = !response.next_page_token.is_empty();
            if json {
                render_json(&json!({
                    "sensor_id": sensor,
                    "count": response.readings.len(),
                    "readings": response.readings.iter().map(reading_json).collect::<Vec<_>>(),
                    "more": more,
                    "meta": meta_json(response.meta.as_ref(), Kind::Read),
                }))
            } else {
                if more {
                    let _ = writeln!(
                        std::io::stderr(),
                        "note: stopped at --limit {limit}; more readings exist"
                    );
                }
                Ok(response
                    .readings
                    .iter()
                    .map(|r| format!("{}\n", reading_text(r)))
                    .collect())
            }
        }
    }
}

async fn run_cluster(
    client: &Client,
    command: ClusterCommand,
    json: bool,
) -> anyhow::Result<String> {
    match command {
        ClusterCommand::Init { members } => {
            let response = client.init(members).await?;
            if json {
                render_json(&json!({
                    "already_initialized": response.already_initialized,
                    "voters": members_json(&response.voters),
                }))
            } else {
                let what = if response.already_initialized {
                    "already initialized"
                } else {
                    "initialized"
                };
                Ok(format!(
                    "{what}; voters: {}\n",
                    members_text(&response.voters)
                ))
            }
        }
        ClusterCommand::AddLearner { id, addr, blocking } => {
            let response = client.add_learner(id, addr, blocking).await?;
            membership_output(&response, json)
        }
        ClusterCommand::ChangeMembership { ids, retain } => {
            let response = client.change_membership(ids, retain).await?;
            membership_output(&response, json)
        }
        ClusterCommand::Status => {
            let cluster = client.cluster_status().await?;
            if json {
                render_json(&cluster_json(&cluster))
            } else {
                Ok(cluster_text(&cluster))
            }
        }
    }
}

// ----- argument parsers (errors here are usage errors: exit 2) -------------

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
        "id", "addr", "role", "term", "leader", "last_log", "commit", "applied", "snapshot",
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
    let session = meta.session.as_ref().map(|s| {
        let provisional: serde_json::Map<String, Value> = s
            .provisional_seq
            .iter()
            .map(|(node, seq)| (node.to_string(), json!(seq)))
            .collect();
        json!({"commit_index": s.commit_index, "provisional_seq": provisional})
    });
    let mut object = json!({
        "served_by": meta.served_by,
        "applied_index": meta.applied_index,
        "term": meta.term,
        "includes_provisional": meta.includes_provisional,
        "staleness_ms": meta.staleness_ms,
        "session": session,
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
        Cli::try_parse_from(std::iter::once("capkv").chain(args.iter().copied()))
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
            }) => {
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
            "error",
        ] {
            assert!(up.get(field).is_some(), "missing {field}");
        }
        assert_eq!(up["reachable"], true);
        assert_eq!(up["last_log_index"], 9);
        let down = &value["nodes"][1];
        assert_eq!(down["reachable"], false);
        assert_eq!(down["role"], Value::Null);
        assert_eq!(down["error"], "transport error: refused");

        let text = cluster_text(&cluster);
        assert!(text.starts_with("leader: 1  term: 3\n"), "{text}");
        assert!(text.contains("n2:7002  unreachable"), "{text}");
        assert!(text.contains("n2:7002: transport error: refused"), "{text}");
    }
}
