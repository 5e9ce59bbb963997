//! Writing a benchmark's table into `BENCHMARKS.md`, each benchmark under its
//! own heading, replacing that section and leaving the others alone.

use std::path::Path;

use anyhow::{Context, Result};

/// One line describing the machine, so numbers are never read without it.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / (1024 * 1024));
    format!("{cpu}, {cores} cores, {memory_gib} GiB memory, Linux")
}

/// Replaces the section that starts with `heading` (up to the next `## `
/// heading) in `BENCHMARKS.md`, or appends it.
pub fn write_section(path: &Path, heading: &str, body: &str) -> Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEach section is written by the `flotilla bench` command named in it.\n"
            .to_string()
    });
    let section = format!("{heading}\n\n{body}\n");
    let updated = match existing.find(heading) {
        Some(start) => {
            let rest = &existing[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(existing.len(), |offset| start + heading.len() + offset + 1);
            format!("{}{}{}", &existing[..start], section, &existing[end..])
        }
        None => format!("{}\n{}", existing.trim_end(), format_args!("\n{section}")),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}
