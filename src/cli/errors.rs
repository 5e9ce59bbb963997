//! Errors at the edge of the client verbs: one readable line naming what
//! was wrong (the file, the kind, the API server's `Status` message), not
//! a chain of Rust debug output. It knows how kube-rs reports a `Status`;
//! the verbs only add context to their errors.

use std::process::ExitCode;

/// Prints `error` for a person and picks the exit code. A closed stdout
/// (`flotilla get pods | head`) is not a failure.
pub fn report(error: &anyhow::Error) -> ExitCode {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", message(error));
    ExitCode::FAILURE
}

/// The context the verb gave, then the root cause; an API `Status` reads
/// as kubectl prints it: `Error from server (NotFound): …`.
fn message(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            let reason = if status.reason.is_empty() {
                format!("{}", status.code)
            } else {
                status.reason.clone()
            };
            parts.push(format!("Error from server ({reason}): {}", status.message));
            break;
        }
        parts.push(cause.to_string());
    }
    // kube-rs repeats its source in its own message; keep each text once.
    parts.dedup_by(|later, earlier| earlier.contains(later.as_str()));
    parts.join(": ")
}

/// Whether `error` is the API saying the object is not there.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_statuses_read_as_kubectl_prints_them() {
        let status = kube::core::Status::failure("deployments.apps \"web\" not found", "NotFound")
            .with_code(404);
        let error = anyhow::Error::from(kube::Error::Api(Box::new(status)))
            .context("getting deployment.apps/web");
        assert_eq!(
            message(&error),
            "getting deployment.apps/web: Error from server (NotFound): \
             deployments.apps \"web\" not found"
        );
    }
}
