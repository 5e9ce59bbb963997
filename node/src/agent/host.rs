//! Facts about the host the agent reports in its Node: its name, its CPUs
//! and its memory. Read from the operating system (Linux's `/proc`); the
//! command line can override each.
//!
//! This module knows nothing of the API: it only reads the machine.

use std::path::Path;

use super::error::{AgentError, Result};

/// The host's name, lowercased: Kubernetes node names are DNS subdomains.
pub fn hostname() -> Result<String> {
    let path = Path::new("/proc/sys/kernel/hostname");
    let name = match std::fs::read_to_string(path) {
        Ok(name) => name,
        // Not Linux: the shell's idea of the name is the next best source.
        Err(source) => std::env::var("HOSTNAME").map_err(|_| AgentError::Host {
            what: "the hostname",
            path: path.to_owned(),
            source,
        })?,
    };
    Ok(name.trim().to_ascii_lowercase())
}

/// The CPUs this process may use, in millicores.
pub fn cpu_millis() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u64::try_from(cpus).unwrap_or(1).saturating_mul(1000)
}

/// The host's memory in bytes (`MemTotal` in `/proc/meminfo`).
pub fn memory_bytes() -> Result<u64> {
    let path = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path).map_err(|source| AgentError::Host {
        what: "the memory size",
        path: path.to_owned(),
        source,
    })?;
    mem_total_bytes(&text).ok_or_else(|| AgentError::Host {
        what: "the memory size",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no MemTotal line"),
    })
}

/// `MemTotal:  16314040 kB` → bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kibibytes: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kibibytes.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_kibibytes() {
        let meminfo = "MemTotal:       16314040 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(16_314_040 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
    }
}
