//! A module compiles once per node; later engines with the same settings
//! load the cached artifact, and a tampered cache entry is recompiled.

use flotilla_node::{ArtifactOrigin, EngineConfig, NodeEngine, PoolConfig};

fn engine(cache_dir: &std::path::Path) -> NodeEngine {
    let mut config = EngineConfig::new(cache_dir);
    config.pool = PoolConfig {
        component_instances: 8,
        core_instances: 8,
        memories: 8,
        tables: 8,
        stacks: 8,
    };
    NodeEngine::new(&config).expect("engine starts")
}

const MODULE: &str = r#"(module (func (export "_start")))"#;

#[test]
fn compiles_once_then_loads_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = engine(dir.path()).compile(MODULE.as_bytes()).unwrap();
    assert_eq!(first, ArtifactOrigin::Compiled);
    let (_, second) = engine(dir.path()).compile(MODULE.as_bytes()).unwrap();
    assert_eq!(second, ArtifactOrigin::Cache);
}

#[test]
fn a_tampered_artifact_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    engine(dir.path()).compile(MODULE.as_bytes()).unwrap();
    let artifact = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .expect("an artifact was cached");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&artifact, bytes).unwrap();
    let (_, origin) = engine(dir.path()).compile(MODULE.as_bytes()).unwrap();
    assert_eq!(origin, ArtifactOrigin::Compiled);
}

#[test]
fn a_real_component_round_trips_through_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(crate::support::guests().module("hello-http").unwrap()).unwrap();
    let (compiled, origin) = engine(dir.path()).compile(&bytes).unwrap();
    assert!(matches!(compiled, flotilla_node::Compiled::Component(_)));
    assert_eq!(origin, ArtifactOrigin::Compiled);
    let (_, origin) = engine(dir.path()).compile(&bytes).unwrap();
    assert_eq!(origin, ArtifactOrigin::Cache);
}
