//! The node's one wasmtime engine: component model, async, the pooling
//! instance allocator and epoch interruption, with one ticker thread that
//! advances the epoch. It also owns the on-disk cache of compiled artifacts,
//! so a module compiles once per node and later starts deserialize it.
//!
//! It knows nothing of pods or Kubernetes: it turns bytes into compiled code.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::error::{Error, Result, describe};

/// How often the epoch advances. Every guest checks the epoch at function
/// entries and loop back-edges, so this is the granularity of CPU accounting,
/// of deadlines and of yielding to other tasks: 10 ms matches a scheduler
/// time slice and costs nothing measurable.
pub const EPOCH_TICK_MS: u64 = 10;

/// Largest linear memory one instance may have, in bytes. Pod memory limits
/// are enforced below this by the store's limiter; this is the pool's slot.
pub const MEMORY_BYTES_MAX: usize = 4 << 30;

/// Largest table one instance may have, in elements. Real programs use a few
/// thousand function-table entries; a million is far beyond that and keeps a
/// hostile `(table 100000000 funcref)` from reserving gigabytes.
pub const TABLE_ELEMENTS_MAX: usize = 1_000_000;

/// Wasm stack a guest may use, in bytes. Deep recursion traps with a stack
/// overflow at this depth instead of touching the host's stack.
pub const WASM_STACK_BYTES_MAX: usize = 1 << 20;

/// Sizes of the pooling allocator's pools. Each slot reserves address space
/// (not memory) up front, so the counts bound how many instances can exist at
/// once on this node.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Component instances alive at once (one per running process or request).
    pub component_instances: u32,
    /// Core instances alive at once (a component holds several).
    pub core_instances: u32,
    /// Linear memories alive at once.
    pub memories: u32,
    /// Tables alive at once.
    pub tables: u32,
    /// Async stacks alive at once (one per instance being called).
    pub stacks: u32,
}

impl Default for PoolConfig {
    /// Room for about a thousand concurrent instances of a typical component
    /// (each has a few core instances, memories and tables).
    fn default() -> Self {
        Self {
            component_instances: 1_000,
            core_instances: 10_000,
            memories: 2_000,
            tables: 10_000,
            stacks: 1_000,
        }
    }
}

/// Settings of the node's engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory where compiled artifacts are cached.
    pub cache_dir: PathBuf,
    /// Pool sizes.
    pub pool: PoolConfig,
    /// Interval between epoch ticks.
    pub epoch_tick: Duration,
}

impl EngineConfig {
    /// Default settings with the artifact cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            pool: PoolConfig::default(),
            epoch_tick: Duration::from_millis(EPOCH_TICK_MS),
        }
    }
}

/// A compiled module or component, before linking.
#[derive(Clone)]
pub enum Compiled {
    /// A WebAssembly component (WASI 0.2).
    Component(Component),
    /// A core WebAssembly module (WASI preview 1).
    Module(Module),
}

/// Where a compiled artifact came from, for tracing and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactOrigin {
    /// Compiled from the module's bytes now.
    Compiled,
    /// Loaded from this node's artifact cache.
    Cache,
}

/// The node's engine and artifact cache. Cheap to share behind an `Arc`.
pub struct NodeEngine {
    engine: Engine,
    cache_dir: PathBuf,
    settings_hash: String,
    ticker_stop: Arc<AtomicBool>,
}

impl NodeEngine {
    /// Creates the engine and starts its epoch ticker thread.
    pub fn new(config: &EngineConfig) -> Result<Self> {
        let engine =
            Engine::new(&wasmtime_config(&config.pool)).map_err(|error| Error::Engine {
                reason: describe(&error),
            })?;
        std::fs::create_dir_all(&config.cache_dir)
            .map_err(|source| Error::io("create cache dir", &config.cache_dir, source))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), config.epoch_tick, ticker_stop.clone())?;
        Ok(Self {
            settings_hash: settings_hash(&engine),
            engine,
            cache_dir: config.cache_dir.clone(),
            ticker_stop,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` (binary Wasm or WAT text, module or component), or
    /// loads the artifact this node compiled earlier for the same bytes and
    /// engine settings.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Compiled, ArtifactOrigin)> {
        let binary = wat::parse_bytes(bytes).map_err(|error| Error::InvalidModule {
            reason: error.to_string(),
        })?;
        let is_component = wasmparser_is_component(&binary)?;
        let path = self.artifact_path(bytes);
        if let Some(compiled) = self.load_cached(&path, is_component) {
            return Ok((compiled, ArtifactOrigin::Cache));
        }
        let _span = tracing::info_span!("compile", bytes = binary.len(), is_component).entered();
        let artifact = if is_component {
            self.engine.precompile_component(&binary)
        } else {
            self.engine.precompile_module(&binary)
        }
        .map_err(|error| Error::InvalidModule {
            reason: describe(&error),
        })?;
        self.store_cached(&path, &artifact);
        let compiled = self
            .deserialize_trusted(&artifact, is_component)
            .map_err(|error| Error::InvalidModule {
                reason: describe(&error),
            })?;
        Ok((compiled, ArtifactOrigin::Compiled))
    }

    /// The cache file for these module bytes under this engine's settings.
    fn artifact_path(&self, bytes: &[u8]) -> PathBuf {
        let digest = hex::encode(Sha256::digest(bytes));
        self.cache_dir
            .join(format!("{digest}-{}.cwasm", self.settings_hash))
    }

    fn load_cached(&self, path: &Path, is_component: bool) -> Option<Compiled> {
        let artifact = std::fs::read(path).ok()?;
        let recorded = std::fs::read_to_string(checksum_path(path)).ok()?;
        if recorded.trim() != hex::encode(Sha256::digest(&artifact)) {
            tracing::warn!(
                ?path,
                "cached artifact does not match its checksum; recompiling"
            );
            return None;
        }
        match self.deserialize_trusted(&artifact, is_component) {
            Ok(compiled) => Some(compiled),
            Err(error) => {
                tracing::warn!(?path, error = %describe(&error), "cannot load cached artifact; recompiling");
                None
            }
        }
    }

    /// Writes the artifact, then its checksum, each through a rename so a
    /// crash leaves either a complete entry or none. A cache that cannot be
    /// written only costs a recompile later, so failures are logged.
    fn store_cached(&self, path: &Path, artifact: &[u8]) {
        let checksum = hex::encode(Sha256::digest(artifact));
        let written = write_atomically(path, artifact)
            .and_then(|()| write_atomically(&checksum_path(path), checksum.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(?path, %error, "cannot write artifact cache");
        }
    }

    #[allow(unsafe_code)]
    fn deserialize_trusted(
        &self,
        artifact: &[u8],
        is_component: bool,
    ) -> wasmtime::Result<Compiled> {
        // SAFETY: `artifact` is either the output of `precompile_*` on this
        // engine a moment ago, or a file from this node's private cache
        // directory that this engine wrote under a name holding the module's
        // sha256 and the engine's settings hash, and whose own sha256 was just
        // checked against the checksum written beside it. wasmtime also checks
        // the artifact's header against the engine's settings before use.
        unsafe {
            if is_component {
                Component::deserialize(&self.engine, artifact).map(Compiled::Component)
            } else {
                Module::deserialize(&self.engine, artifact).map(Compiled::Module)
            }
        }
    }
}

impl Drop for NodeEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn wasmtime_config(pool: &PoolConfig) -> Config {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(pool.component_instances)
        .total_core_instances(pool.core_instances)
        .total_memories(pool.memories)
        .total_tables(pool.tables)
        .total_stacks(pool.stacks)
        .max_memory_size(MEMORY_BYTES_MAX)
        .table_elements(TABLE_ELEMENTS_MAX);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(WASM_STACK_BYTES_MAX)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    config
}

/// Advances the epoch from a plain thread, not a tokio task: a guest spinning
/// on a runtime worker must still see time pass, and tests that pause tokio's
/// clock must not stop guests from being interrupted.
fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("flotilla-epoch".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|error| Error::Engine {
            reason: format!("cannot start epoch ticker: {error}"),
        })
}

/// A stable hash of everything in the engine's settings that affects
/// compiled code, as hex.
fn settings_hash(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

/// Feeds `Hash` output into sha256, which (unlike `DefaultHasher`) is the
/// same across Rust releases.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Whether binary Wasm is a component (layer 1) rather than a core module:
/// the 16-bit layer field follows the magic and the version.
fn wasmparser_is_component(binary: &[u8]) -> Result<bool> {
    match binary {
        [0x00, 0x61, 0x73, 0x6d, _, _, 0x00, 0x00, ..] => Ok(false),
        [0x00, 0x61, 0x73, 0x6d, _, _, 0x01, 0x00, ..] => Ok(true),
        _ => Err(Error::InvalidModule {
            reason: "not a WebAssembly module or component (bad magic or layer)".to_owned(),
        }),
    }
}

fn checksum_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.sha256")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per process and per write, so concurrent writers of one entry
    // never share a temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    let temporary = path.with_extension(format!("tmp{}-{write}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
