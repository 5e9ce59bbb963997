//! `flotilla token create [--server]`: a join token for new agents, or
//! servers. The
//! token is a Kubernetes bootstrap token kept as a Secret in
//! `kube-system` (so `kubectl -n kube-system delete secret
//! bootstrap-token-<id>` revokes it), pinned to the cluster CA the server
//! answers with. It knows `flotilla_control::join`, not how joins go.

use std::time::Duration;

use anyhow::{Context, Result};

use super::output::print;
use super::session::{ClientArgs, Session};

/// Join tokens for new servers and agents.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a join token and print it.
    #[command(after_help = "Examples:
  flotilla token create                   # for agents, valid for 24 hours
  flotilla token create --server          # for servers (they receive the CA's key)
  flotilla token create --ttl 1h --description 'rack 4'
  flotilla token create --ttl 0           # never expires

Then, on the new machine:
  flotilla agent --server https://SERVER:6443 --token TOKEN
  flotilla server --join https://SERVER:6443 --token SERVER_TOKEN")]
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// How long the token is valid: `30m`, `24h`, `7d`; `0` for ever.
    #[arg(long, default_value = "24h", value_parser = super::duration::parse_duration)]
    pub ttl: Duration,
    /// What the token is for, kept with it.
    #[arg(long, default_value = "created by flotilla token create")]
    pub description: String,
    /// A token for new servers instead of agents. A server that joins
    /// receives the cluster CA's key, so its token is kept apart.
    #[arg(long)]
    pub server: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(command: Command) -> Result<()> {
    let Command::Create(args) = command;
    let session = Session::connect(&args.client).await?;
    let request = http::Request::get(format!("{}/ca", flotilla_control::join::JOIN_PATH))
        .body(Vec::new())
        .context("building the request")?;
    let ca_pem = session.client.request_text(request).await.context(
        "reading the cluster CA (only a server serving HTTPS has one; \
         plain-HTTP servers cannot admit servers or agents)",
    )?;
    let ttl = (!args.ttl.is_zero()).then_some(args.ttl);
    let purpose = if args.server {
        flotilla_control::join::token::Purpose::Server
    } else {
        flotilla_control::join::token::Purpose::Agent
    };
    let token = flotilla_control::join::create_token(
        &session.client,
        &ca_pem,
        ttl,
        &args.description,
        purpose,
    )
    .await
    .context("creating the token")?;
    print(format!("{token}\n"))
}
