//! `flotilla token create`: a join token for new servers and agents. The
//! token is a Kubernetes bootstrap token kept as a Secret in
//! `kube-system` (so `kubectl -n kube-system delete secret
//! bootstrap-token-<id>` revokes it), pinned to the cluster CA the server
//! answers with. It knows `flotilla_control::join`, not how joins go.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::output::print;
use super::session::{ClientArgs, Session};

/// Join tokens for new servers and agents.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a join token and print it.
    #[command(after_help = "Examples:
  flotilla token create                   # valid for 24 hours
  flotilla token create --ttl 1h --description 'rack 4'
  flotilla token create --ttl 0           # never expires

Then, on the new machine:
  flotilla agent --server https://SERVER:6443 --token TOKEN
  flotilla server --join https://SERVER:6443 --token TOKEN")]
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// How long the token is valid: `30m`, `24h`, `7d`; `0` for ever.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// What the token is for, kept with it.
    #[arg(long, default_value = "created by flotilla token create")]
    pub description: String,
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
    let token =
        flotilla_control::join::create_token(&session.client, &ca_pem, ttl, &args.description)
            .await
            .context("creating the token")?;
    print(format!("{token}\n"))
}

/// `90s`, `30m`, `24h`, `7d`, or `0`.
fn parse_ttl(text: &str) -> Result<Duration> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 30m, 24h or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("{text:?} is not a duration like 30m, 24h or 7d"),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn lifetimes_read_as_written() {
        assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "h", "24", "1y", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
