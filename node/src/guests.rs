//! Builds the guest examples (`examples/`, a workspace of its own) for
//! `wasm32-wasip2`, for tests, the CLI and benchmarks: one
//! `cargo build --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml`
//! into `<target dir>/guests`. A missing `wasm32-wasip2` target is added with
//! rustup, or reported with how to install it.
//!
//! This module runs host tools; it knows nothing of the runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Why the guests could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    /// The Rust target is missing and could not be added.
    #[error(
        "the {GUEST_TARGET} Rust target is missing and `rustup target add {GUEST_TARGET}` failed ({reason}); install it with `rustup target add {GUEST_TARGET}`"
    )]
    TargetMissing { reason: String },
    /// cargo failed.
    #[error(
        "building the guest examples failed ({reason}); run `cargo build --release --target {GUEST_TARGET} --manifest-path examples/Cargo.toml` to see why"
    )]
    Build { reason: String },
    /// The build succeeded but a module is missing.
    #[error("guest module {path:?} was not produced")]
    Missing { path: PathBuf },
}

/// Built guest modules.
#[derive(Debug, Clone)]
pub struct GuestModules {
    dir: PathBuf,
}

impl GuestModules {
    /// The `.wasm` of the example crate `name` (e.g. `hello-http`).
    pub fn module(&self, name: &str) -> Result<PathBuf, GuestBuildError> {
        // A library (a `wasi:http` component) is named with underscores,
        // a binary (a `wasi:cli` command) as its crate is.
        let library = self.dir.join(format!("{}.wasm", name.replace('-', "_")));
        let binary = self.dir.join(format!("{name}.wasm"));
        if library.is_file() {
            Ok(library)
        } else if binary.is_file() {
            Ok(binary)
        } else {
            Err(GuestBuildError::Missing { path: library })
        }
    }
}

/// Builds every example under `repo_root/examples` into `target_dir/guests`.
/// cargo's own up-to-date check makes repeated calls cheap.
pub fn build_examples(
    repo_root: &Path,
    target_dir: &Path,
) -> Result<GuestModules, GuestBuildError> {
    ensure_target()?;
    let guest_target_dir = target_dir.join("guests");
    let output = Command::new(cargo())
        .arg("build")
        .arg("--release")
        .args(["--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(repo_root.join("examples").join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &guest_target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|error| GuestBuildError::Build {
            reason: error.to_string(),
        })?;
    if !output.status.success() {
        return Err(GuestBuildError::Build {
            reason: last_lines(&output.stderr),
        });
    }
    Ok(GuestModules {
        dir: guest_target_dir.join(GUEST_TARGET).join("release"),
    })
}

fn ensure_target() -> Result<(), GuestBuildError> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(output)
            if String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.trim() == GUEST_TARGET) =>
        {
            return Ok(());
        }
        // Without rustup the toolchain may still have the target; let cargo say.
        Err(_) => return Ok(()),
        Ok(_) => {}
    }
    let added = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .output()
        .map_err(|error| GuestBuildError::TargetMissing {
            reason: error.to_string(),
        })?;
    if added.status.success() {
        Ok(())
    } else {
        Err(GuestBuildError::TargetMissing {
            reason: last_lines(&added.stderr),
        })
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn last_lines(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
