//! The client verbs of the `flotilla` binary (`apply`, `get`, `describe`,
//! `delete`, `logs`, `scale`, `rollout`, `run`, `nodes`, `push`, `token`): what kubectl
//! does, for people without it and for what it cannot do. Every verb is an
//! API client through kube-rs and nothing else; none knows the store, the
//! controllers or the node runtime.
//!
//! One file per verb, each with its clap `Args` (doc comment, examples in
//! `after_help`, and the shared [`session::ClientArgs`] flattened in) and
//! `run`. Adding a verb is that file plus one line in [`Verb`] and one in
//! [`run`]. What verbs share lives beside them: the session (kubeconfig,
//! client, namespace), kind resolution through discovery, manifests,
//! output formats, and the readable form of API errors.

mod apply;
mod catalog;
mod delete;
mod describe;
pub mod duration;
mod errors;
mod get;
mod logs;
mod manifest;
mod merge;
mod nodes;
mod output;
mod push;
mod rollout;
mod run;
mod scale;
mod session;
mod token;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

/// The client verbs, flattened into the binary's top-level subcommands.
#[derive(Subcommand, Debug)]
pub enum Verb {
    Apply(apply::Args),
    Get(get::Args),
    Describe(describe::Args),
    Delete(delete::Args),
    Logs(logs::Args),
    Scale(scale::Args),
    /// Watch, list and undo a Deployment's rollouts.
    #[command(
        subcommand,
        after_help = "Examples:
  flotilla rollout status deployment/web
  flotilla rollout history deployment/web
  flotilla rollout undo deployment/web --to-revision 1"
    )]
    Rollout(rollout::Command),
    Run(run::Args),
    Nodes(nodes::Args),
    Push(push::Args),
    #[command(subcommand)]
    Token(token::Command),
}

/// Runs one verb; its error, if any, is printed for a person.
pub async fn run(verb: Verb) -> ExitCode {
    match dispatch(verb).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => errors::report(&error),
    }
}

async fn dispatch(verb: Verb) -> Result<()> {
    match verb {
        Verb::Apply(args) => apply::run(args).await,
        Verb::Get(args) => get::run(args).await,
        Verb::Describe(args) => describe::run(args).await,
        Verb::Delete(args) => delete::run(args).await,
        Verb::Logs(args) => logs::run(args).await,
        Verb::Scale(args) => scale::run(args).await,
        Verb::Rollout(command) => rollout::run(command).await,
        Verb::Run(args) => run::run(args).await,
        Verb::Nodes(args) => nodes::run(args).await,
        Verb::Push(args) => push::run(args).await,
        Verb::Token(command) => token::run(command).await,
    }
}
