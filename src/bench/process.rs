//! The processes a benchmark starts (the systems under test), each logging
//! to its own file, killed and reaped when the benchmark ends or fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

#[derive(Default)]
pub struct Processes {
    children: Vec<Child>,
}

impl Processes {
    /// Starts `command` with its stderr in `log` and its stdout discarded.
    pub fn spawn(&mut self, command: &mut Command, log: &Path) -> Result<()> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Empties `dir` (or creates it) and returns its absolute path: each run
/// starts both systems from nothing.
pub fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.canonicalize()?)
}

/// The repository root, and the example `name`'s module built for
/// `wasm32-wasip2` (`examples/`, built as the tests build them, into the
/// target directory).
pub fn example_module(
    name: &str,
) -> anyhow::Result<(&'static std::path::Path, std::path::PathBuf)> {
    let repo_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root.join("target"), std::path::PathBuf::from);
    eprintln!("building the guest examples");
    let guests = flotilla_node::guests::build_examples(repo_root, &target_dir)?;
    Ok((repo_root, guests.module(name)?))
}
