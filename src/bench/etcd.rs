//! The peer side of the store benchmark: etcd 3.4 members started on loopback
//! and a gRPC client for the two calls the benchmark makes.
//!
//! The client speaks etcd's v3 gRPC API through tonic's generic client with
//! prost messages declared here, so no protoc and no generated code is
//! needed. Only the fields the benchmark uses are declared; prost skips the
//! rest of etcd's answers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use super::load::KvTarget;
use super::process::Processes;

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    /// With a non-empty end, the read covers [key, range_end).
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
    /// 0: no limit.
    #[prost(int64, tag = "3")]
    limit: i64,
    /// false asks for a linearizable read, etcd's default.
    #[prost(bool, tag = "7")]
    serializable: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeResponse {
    #[prost(message, repeated, tag = "2")]
    kvs: Vec<KeyValue>,
    #[prost(int64, tag = "4")]
    count: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
}

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// A gRPC connection to one etcd member.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: Grpc<Channel>,
}

impl EtcdClient {
    pub async fn connect(address: SocketAddr) -> Result<Self> {
        let channel = Channel::from_shared(format!("http://{address}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {address}"))?;
        Ok(Self {
            grpc: Grpc::new(channel),
        })
    }
}

impl EtcdClient {
    /// A linearizable read of at most `limit` keys under `prefix`, as
    /// kube-apiserver pages a list; returns how many came back.
    pub async fn range_prefix(&self, prefix: &[u8], limit: i64) -> Result<usize> {
        let mut range_end = prefix.to_vec();
        if let Some(last) = range_end.last_mut() {
            *last += 1;
        }
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let response: tonic::Response<RangeResponse> = grpc
            .unary(
                tonic::Request::new(RangeRequest {
                    key: prefix.to_vec(),
                    range_end,
                    limit,
                    serializable: false,
                }),
                PathAndQuery::from_static(RANGE_PATH),
                ProstCodec::default(),
            )
            .await?;
        Ok(response.into_inner().kvs.len())
    }
}

impl KvTarget for EtcdClient {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let _: tonic::Response<PutResponse> = grpc
            .unary(
                tonic::Request::new(PutRequest { key, value }),
                PathAndQuery::from_static(PUT_PATH),
                ProstCodec::default(),
            )
            .await?;
        Ok(())
    }

    async fn get(&self, key: Vec<u8>) -> Result<bool> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let response: tonic::Response<RangeResponse> = grpc
            .unary(
                tonic::Request::new(RangeRequest {
                    key,
                    ..RangeRequest::default()
                }),
                PathAndQuery::from_static(RANGE_PATH),
                ProstCodec::default(),
            )
            .await?;
        Ok(response.into_inner().count > 0)
    }
}

/// Three etcd members on loopback, killed when dropped.
pub struct EtcdCluster {
    _processes: Processes,
    pub client_addresses: Vec<SocketAddr>,
}

impl EtcdCluster {
    /// Starts `addresses.len()` members. Each pair is (client, peer) address.
    pub fn start(
        etcd: &Path,
        data_root: &Path,
        addresses: &[(SocketAddr, SocketAddr)],
    ) -> Result<Self> {
        let initial_cluster = addresses
            .iter()
            .enumerate()
            .map(|(index, (_, peer))| format!("m{index}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut processes = Processes::default();
        for (index, (client, peer)) in addresses.iter().enumerate() {
            let data_dir = data_root.join(format!("etcd-{index}"));
            let mut command = Command::new(etcd);
            command
                .arg(format!("--name=m{index}"))
                .arg(format!("--data-dir={}", data_dir.display()))
                .arg(format!("--listen-client-urls=http://{client}"))
                .arg(format!("--advertise-client-urls=http://{client}"))
                .arg(format!("--listen-peer-urls=http://{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=flotilla-bench")
                // etcd fsyncs its WAL on every commit by default; say so.
                .arg("--unsafe-no-fsync=false")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr");
            processes.spawn(&mut command, &data_root.join(format!("etcd-{index}.log")))?;
        }
        Ok(EtcdCluster {
            _processes: processes,
            client_addresses: addresses.iter().map(|(client, _)| *client).collect(),
        })
    }
}

/// Finds the etcd binary, or says how to install it.
pub fn find_etcd() -> Result<std::path::PathBuf> {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        let path = Path::new(candidate);
        if path.exists() {
            return Ok(path.to_path_buf());
        }
    }
    bail!("etcd is not installed: run `apt-get install etcd-server` (Debian's etcd 3.4)")
}
