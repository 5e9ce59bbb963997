//! `flotilla push`: stores a Wasm component (or core module) in the
//! cluster's module registry under `name:tag`, content-addressed by its
//! sha256, so pods can name it. It knows the registry's client calls
//! (`flotilla_control::registry`), not how the registry stores blobs.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::output::print;
use super::session::{ClientArgs, Session};

/// Push a Wasm component to the cluster's registry, for pods to run.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla push target/wasm32-wasip2/release/hello.wasm hello:1.0
  flotilla push ./app.wasm registry-demo/app      # tag `latest`

Then name it in a pod or a Deployment: `image: hello:1.0`. Each pod is pinned
to the digest the tag named when it was created.")]
pub struct Args {
    /// The `.wasm` file.
    pub file: PathBuf,
    /// NAME:TAG (`:latest` when the tag is left out).
    pub reference: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let session = Session::connect(&args.client).await?;
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    // Uploads of a few MiB take a moment: say what is happening meanwhile.
    eprintln!(
        "pushing {} ({}) as {}…",
        args.file.display(),
        human_size(size),
        args.reference
    );
    let pushed =
        flotilla_control::registry::push_file(&session.client, &args.file, &args.reference)
            .await
            .with_context(|| format!("pushing {}", args.file.display()))?;
    let how = if pushed.uploaded {
        "pushed"
    } else {
        "already stored; tagged"
    };
    print(format!(
        "{}:{} {how} ({})\n",
        pushed.name, pushed.tag, pushed.digest
    ))
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / f64::from(1 << 10)),
        b => format!("{b} bytes"),
    }
}
