//! What is measured: the system, the workload and the consistency level, as
//! the command line spells them, and which combinations make sense.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use capkv_client::{ReadLevel, WriteLevel};
use serde::{Deserialize, Serialize};

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Capkv,
    Etcd,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Capkv => "capkv",
            System::Etcd => "etcd",
        })
    }
}

impl FromStr for System {
    type Err = String;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.trim().to_ascii_lowercase().as_str() {
            "capkv" => Ok(System::Capkv),
            "etcd" => Ok(System::Etcd),
            _ => Err(format!("unknown target {input:?}: expected capkv or etcd")),
        }
    }
}

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 256-byte values on a space of distinct keys.
    Put,
    /// Sensor readings in batches; throughput counts readings.
    Ingest,
    /// Point reads of preloaded keys.
    Get,
    /// The newest `range_limit` readings of a preloaded sensor, newest first.
    Range,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Put,
        Workload::Ingest,
        Workload::Get,
        Workload::Range,
    ];

    pub fn is_write(self) -> bool {
        matches!(self, Workload::Put | Workload::Ingest)
    }

    /// The unit of the throughput column.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Ingest => "readings/s",
            _ => "ops/s",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Put => "put",
            Workload::Ingest => "ingest",
            Workload::Get => "get",
            Workload::Range => "range",
        })
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.trim().to_ascii_lowercase().as_str() {
            "put" => Ok(Workload::Put),
            "ingest" => Ok(Workload::Ingest),
            "get" => Ok(Workload::Get),
            "range" => Ok(Workload::Range),
            _ => Err(format!(
                "unknown workload {input:?}: expected put, ingest, get or range"
            )),
        }
    }
}

/// A consistency level of either system. Writes: `strong`,
/// `strong-coalesced` (capkv put: STRONG with the SDK's put coalescing), `local`,
/// `local-coalesced` (the same for LOCAL), `strong-or-local[:<ms>]` (capkv;
/// etcd only `strong`). Reads:
/// `linearizable`, `session`, `eventual`, `bounded:<ms>` (capkv),
/// `linearizable`, `serializable` (etcd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Level {
    Strong,
    /// STRONG puts with the SDK's put coalescing on
    /// (`ClientConfig::coalesce_puts`); capkv's put workload only.
    StrongCoalesced,
    Local,
    /// LOCAL puts with the SDK's put coalescing on; capkv's put workload
    /// only.
    LocalCoalesced,
    StrongOrLocal {
        budget_ms: Option<u64>,
    },
    Linearizable,
    Session,
    Eventual,
    Bounded {
        ms: u64,
    },
    Serializable,
}

pub const LEVEL_FORMS: &str = "strong, strong-coalesced, local, local-coalesced, strong-or-local[:<ms>], linearizable, session, eventual, bounded:<ms>, serializable";

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Strong => f.write_str("strong"),
            Level::StrongCoalesced => f.write_str("strong-coalesced"),
            Level::Local => f.write_str("local"),
            Level::LocalCoalesced => f.write_str("local-coalesced"),
            Level::StrongOrLocal { budget_ms: None } => f.write_str("strong-or-local"),
            Level::StrongOrLocal {
                budget_ms: Some(ms),
            } => write!(f, "strong-or-local:{ms}"),
            Level::Linearizable => f.write_str("linearizable"),
            Level::Session => f.write_str("session"),
            Level::Eventual => f.write_str("eventual"),
            Level::Bounded { ms } => write!(f, "bounded:{ms}"),
            Level::Serializable => f.write_str("serializable"),
        }
    }
}

impl FromStr for Level {
    type Err = String;

    /// Case-insensitive; `_` may stand for `-`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim().to_ascii_lowercase().replace('_', "-");
        let (name, parameter) = match text.split_once(':') {
            Some((name, parameter)) => (name.trim(), Some(parameter.trim())),
            None => (text.as_str(), None),
        };
        let ms = |p: &str| -> Result<u64, String> {
            match p.parse::<u64>() {
                Ok(ms) if ms >= 1 => Ok(ms),
                _ => Err(format!(
                    "invalid level {input:?}: {p:?} is not a whole number of milliseconds >= 1"
                )),
            }
        };
        let level = match (name, parameter) {
            ("strong", None) => Level::Strong,
            ("strong-coalesced", None) => Level::StrongCoalesced,
            ("local", None) => Level::Local,
            ("local-coalesced", None) => Level::LocalCoalesced,
            ("strong-or-local", None) => Level::StrongOrLocal { budget_ms: None },
            ("strong-or-local", Some(p)) => Level::StrongOrLocal {
                budget_ms: Some(ms(p)?),
            },
            ("linearizable", None) => Level::Linearizable,
            ("session", None) => Level::Session,
            ("eventual", None) => Level::Eventual,
            ("bounded", Some(p)) => Level::Bounded { ms: ms(p)? },
            ("serializable", None) => Level::Serializable,
            _ => {
                return Err(format!(
                    "invalid level {input:?}: expected one of {LEVEL_FORMS}"
                ))
            }
        };
        Ok(level)
    }
}

impl From<Level> for String {
    fn from(level: Level) -> String {
        level.to_string()
    }
}

impl TryFrom<String> for Level {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl Level {
    pub fn is_write(self) -> bool {
        self.capkv_write().is_some()
    }

    /// Whether the capkv client coalesces concurrent puts.
    pub fn coalesces_puts(self) -> bool {
        matches!(self, Level::StrongCoalesced | Level::LocalCoalesced)
    }

    /// Whether acknowledged writes may still be waiting to reach the Raft
    /// log, so the run ends with a reconciliation-lag measurement.
    pub fn may_be_provisional(self) -> bool {
        matches!(
            self,
            Level::Local | Level::LocalCoalesced | Level::StrongOrLocal { .. }
        )
    }

    /// The default level of a workload: the strongest one.
    pub fn default_for(workload: Workload) -> Level {
        if workload.is_write() {
            Level::Strong
        } else {
            Level::Linearizable
        }
    }

    /// The capkv write level (for write levels).
    pub fn capkv_write(self) -> Option<WriteLevel> {
        match self {
            Level::Strong | Level::StrongCoalesced => Some(WriteLevel::Strong),
            Level::Local | Level::LocalCoalesced => Some(WriteLevel::Local),
            Level::StrongOrLocal { budget_ms } => Some(WriteLevel::StrongOrLocal {
                budget: budget_ms.map(Duration::from_millis),
            }),
            _ => None,
        }
    }

    /// The capkv read level (for read levels capkv has).
    pub fn capkv_read(self) -> Option<ReadLevel> {
        match self {
            Level::Linearizable => Some(ReadLevel::Linearizable),
            Level::Session => Some(ReadLevel::Session),
            Level::Eventual => Some(ReadLevel::Eventual),
            Level::Bounded { ms } => Some(ReadLevel::Bounded {
                max_staleness: Duration::from_millis(ms),
            }),
            _ => None,
        }
    }

    /// The etcd level a capkv run at this level is compared with: every
    /// write against etcd's (quorum) put; a linearizable read against
    /// etcd's linearizable range; any weaker read against its serializable
    /// range (served locally by any member, like capkv's weaker levels).
    pub fn etcd_counterpart(self) -> Level {
        match self {
            Level::Strong
            | Level::StrongCoalesced
            | Level::Local
            | Level::LocalCoalesced
            | Level::StrongOrLocal { .. } => Level::Strong,
            Level::Linearizable => Level::Linearizable,
            Level::Session | Level::Eventual | Level::Bounded { .. } | Level::Serializable => {
                Level::Serializable
            }
        }
    }
}

/// Checks that `system` can run `workload` at `level`; the error says what
/// would work.
pub fn check_combination(system: System, workload: Workload, level: Level) -> Result<(), String> {
    let ok = match (system, workload.is_write()) {
        // Coalescing joins puts; other writes are batches already.
        (System::Capkv, true) => {
            level.capkv_write().is_some() && (!level.coalesces_puts() || workload == Workload::Put)
        }
        (System::Capkv, false) => level.capkv_read().is_some(),
        (System::Etcd, true) => level == Level::Strong,
        (System::Etcd, false) => matches!(level, Level::Linearizable | Level::Serializable),
    };
    if ok {
        return Ok(());
    }
    let allowed = match (system, workload.is_write()) {
        (System::Capkv, true) => {
            "strong, local, strong-or-local[:<ms>] (and strong-coalesced, local-coalesced for put)"
        }
        (System::Capkv, false) => "linearizable, session, eventual, bounded:<ms>",
        (System::Etcd, true) => "strong (etcd takes no write without a quorum)",
        (System::Etcd, false) => "linearizable, serializable",
    };
    Err(format!(
        "{system} cannot run {workload} at level {level}; use {allowed}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_print_back() {
        let cases = [
            ("strong", Level::Strong),
            ("strong-coalesced", Level::StrongCoalesced),
            ("local-coalesced", Level::LocalCoalesced),
            ("LOCAL", Level::Local),
            ("strong_or_local", Level::StrongOrLocal { budget_ms: None }),
            (
                "strong-or-local:250",
                Level::StrongOrLocal {
                    budget_ms: Some(250),
                },
            ),
            ("linearizable", Level::Linearizable),
            ("session", Level::Session),
            (" eventual ", Level::Eventual),
            ("bounded:100", Level::Bounded { ms: 100 }),
            ("Bounded: 5", Level::Bounded { ms: 5 }),
            ("serializable", Level::Serializable),
        ];
        for (text, level) in cases {
            assert_eq!(text.parse::<Level>(), Ok(level), "{text:?}");
            assert_eq!(level.to_string().parse::<Level>(), Ok(level));
        }
        for bad in [
            "",
            "bounded",
            "bounded:0",
            "bounded:x",
            "strong:5",
            "strong-or-local:0",
            "quorum",
        ] {
            assert!(bad.parse::<Level>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn levels_serialize_as_their_text() {
        let json = serde_json::to_string(&Level::Bounded { ms: 50 }).expect("serializes");
        assert_eq!(json, "\"bounded:50\"");
        let back: Level = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, Level::Bounded { ms: 50 });
        assert!(serde_json::from_str::<Level>("\"bounded:0\"").is_err());
    }

    #[test]
    fn combinations_follow_what_each_system_has() {
        use Level::*;
        assert!(check_combination(System::Capkv, Workload::Put, Local).is_ok());
        assert!(check_combination(System::Capkv, Workload::Ingest, Strong).is_ok());
        assert!(check_combination(System::Capkv, Workload::Put, StrongCoalesced).is_ok());
        assert!(check_combination(System::Capkv, Workload::Ingest, StrongCoalesced).is_err());
        assert!(check_combination(System::Etcd, Workload::Put, StrongCoalesced).is_err());
        assert!(check_combination(System::Capkv, Workload::Put, LocalCoalesced).is_ok());
        assert!(check_combination(System::Capkv, Workload::Ingest, LocalCoalesced).is_err());
        assert!(LocalCoalesced.may_be_provisional() && LocalCoalesced.coalesces_puts());
        assert!(!Local.coalesces_puts());
        assert!(check_combination(System::Capkv, Workload::Get, Bounded { ms: 10 }).is_ok());
        assert!(check_combination(System::Capkv, Workload::Get, Serializable).is_err());
        assert!(check_combination(System::Capkv, Workload::Put, Eventual).is_err());
        assert!(check_combination(System::Etcd, Workload::Put, Strong).is_ok());
        assert!(check_combination(System::Etcd, Workload::Range, Serializable).is_ok());
        let error = check_combination(System::Etcd, Workload::Put, Local).expect_err("no LOCAL");
        assert!(error.contains("quorum"), "{error}");
        assert!(check_combination(System::Etcd, Workload::Get, Eventual).is_err());
    }

    #[test]
    fn etcd_counterparts() {
        assert_eq!(Level::Local.etcd_counterpart(), Level::Strong);
        assert_eq!(
            Level::StrongOrLocal { budget_ms: None }.etcd_counterpart(),
            Level::Strong
        );
        assert_eq!(Level::Linearizable.etcd_counterpart(), Level::Linearizable);
        assert_eq!(Level::Eventual.etcd_counterpart(), Level::Serializable);
        assert_eq!(
            Level::Bounded { ms: 100 }.etcd_counterpart(),
            Level::Serializable
        );
    }

    #[test]
    fn capkv_levels_map_to_the_sdk() {
        assert_eq!(Level::Local.capkv_write(), Some(WriteLevel::Local));
        assert_eq!(
            Level::Bounded { ms: 7 }.capkv_read(),
            Some(ReadLevel::Bounded {
                max_staleness: Duration::from_millis(7)
            })
        );
        assert_eq!(Level::Serializable.capkv_read(), None);
        assert!(Level::Local.may_be_provisional());
        assert!(!Level::Strong.may_be_provisional());
    }
}
