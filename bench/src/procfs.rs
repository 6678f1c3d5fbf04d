//! What the server processes cost: CPU time and peak memory from `/proc`,
//! and the bytes their data directories hold.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries `dir_bytes` visits at most, so a wrong path (say `/`) cannot make
/// the tool walk a whole file system.
pub const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Directory depth `dir_bytes` descends at most.
pub const MAX_DIR_DEPTH: usize = 16;

/// User + system CPU time of a process, in clock ticks, from the text of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`, ...), in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(value),
            Some(_) => None,
        }
    })
}

/// Busy CPU ticks of the whole machine (all CPUs) from the text of
/// `/proc/stat`: user + nice + system + irq + softirq + steal of the `cpu`
/// line (idle and iowait are not busy; guest time is already in user).
pub fn parse_proc_stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    (fields.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// Busy CPU seconds of the whole machine so far (see
/// [`parse_proc_stat_busy_ticks`]).
pub fn machine_busy_seconds() -> io::Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let ticks = parse_proc_stat_busy_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: no cpu line"))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unparsable"),
        )
    })?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> io::Result<f64> {
    cpu_seconds(std::process::id())
}

/// Peak resident set size of process `pid` (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, "VmHWM").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status: no VmHWM"),
        )
    })
}

/// Bytes allocated on disk for the files under `dir` (like `du`), bounded
/// by [`MAX_DIR_ENTRIES`] and [`MAX_DIR_DEPTH`]. Symlinks are not followed.
/// Files that vanish while it walks (a compaction) are skipped.
pub fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut visited = 0usize;
    let mut stack: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    fs::symlink_metadata(dir)?;
    while let Some((path, depth)) = stack.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            visited += 1;
            if visited > MAX_DIR_ENTRIES {
                return Ok(total);
            }
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth + 1 < MAX_DIR_DEPTH {
                    stack.push((entry.path(), depth + 1));
                }
            } else if meta.is_file() {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line from a capkv-node (pid 4242), with a hostile command name.
    const STAT: &str = "4242 (capkv node (x)) S 1 4242 4242 0 -1 4194560 5083 0 0 0 \
        1234 567 0 0 20 0 9 0 123456 1175465984 11017 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17987 0 0 0 17 1 0 0 0 0 0";

    const STATUS: &str = "Name:\tcapkv-node\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t 1179072 kB\nVmSize:\t 1147916 kB\nVmHWM:\t   45316 kB\nVmRSS:\t   44068 kB\n\
        Threads:\t9\n";

    #[test]
    fn stat_gives_user_plus_system_ticks() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(1234 + 567));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_in_kib() {
        assert_eq!(parse_status_kib(STATUS, "VmHWM"), Some(45_316));
        assert_eq!(parse_status_kib(STATUS, "VmRSS"), Some(44_068));
        assert_eq!(parse_status_kib(STATUS, "Threads"), Some(9));
        assert_eq!(parse_status_kib(STATUS, "VmSwap"), None);
        // A field whose name is a prefix of another's is not confused.
        assert_eq!(parse_status_kib("VmHWMX:\t1 kB\n", "VmHWM"), None);
    }

    #[test]
    fn proc_stat_busy_ticks_skip_idle_and_iowait() {
        let stat = "cpu  100 5 30 9000 70 1 2 3 0 0\ncpu0 50 2 15 4500 35 0 1 1 0 0\nintr 1\n";
        assert_eq!(
            parse_proc_stat_busy_ticks(stat),
            Some(100 + 5 + 30 + 1 + 2 + 3)
        );
        assert_eq!(parse_proc_stat_busy_ticks("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat_busy_ticks("cpu  1 x 3 4\n"), None);
        assert!(machine_busy_seconds().expect("/proc/stat") > 0.0);
    }

    #[test]
    fn this_process_is_measurable() {
        assert!(own_cpu_seconds().expect("own stat") >= 0.0);
        assert!(peak_rss_kib(std::process::id()).expect("own status") > 0);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn dir_bytes_counts_allocated_file_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(dir.path().join("a"), vec![1u8; 10_000]).expect("write");
        fs::write(dir.path().join("sub/b"), vec![2u8; 5_000]).expect("write");
        let bytes = dir_bytes(dir.path()).expect("walk");
        assert!(bytes >= 15_000, "{bytes}");
        assert!(dir_bytes(&dir.path().join("missing")).is_err());
    }
}
