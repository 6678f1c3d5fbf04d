//! A one-line description of the machine the benchmark ran on.

use std::fs;

/// The CPU model and count, memory and kernel, from `/proc`.
pub fn describe() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    describe_from(&cpuinfo, &meminfo, kernel.trim())
}

/// [`describe`] on given file contents.
pub fn describe_from(cpuinfo: &str, meminfo: &str, kernel: &str) -> String {
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = cpuinfo
        .lines()
        .filter(|line| line.split(':').next().map(str::trim) == Some("processor"))
        .count();
    let mem_gib = crate::procfs::parse_status_kib(meminfo, "MemTotal")
        .map(|kib| kib as f64 / (1024.0 * 1024.0));
    let mut text = format!("{cpus} x {model}");
    if let Some(gib) = mem_gib {
        text += &format!(", {gib:.0} GiB RAM");
    }
    if !kernel.is_empty() {
        text += &format!(", Linux {kernel}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_cpu_memory_and_kernel() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        let meminfo = "MemTotal:       24671244 kB\nMemFree:        1 kB\n";
        assert_eq!(
            describe_from(cpuinfo, meminfo, "6.18.44"),
            "2 x AMD EPYC, 24 GiB RAM, Linux 6.18.44"
        );
        assert_eq!(describe_from("", "", ""), "0 x unknown CPU");
    }
}
