//! Renewing the node's certificate before it expires, as kubelet rotates
//! its client certificate: at a random point between 70 % and 90 % of its
//! lifetime the agent asks the API server for a new one, presenting the
//! current one (no join token), and swaps it in ([`KubeletTls::replace`]).
//! Random, so that nodes that joined together do not all renew at once.
//!
//! A failed renewal is retried with doubling delays up to five minutes
//! while the certificate is still valid; once it has expired the node can
//! no longer authenticate, and only joining again gives it a certificate.
//!
//! This module knows when and whom to ask; TLS is `tls.rs`'s.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::{Duration, SystemTime};

use flotilla_pki::{CertificateInfo, Credentials};

use super::tls::KubeletTls;

/// Where the API server renews a node's certificate.
pub const RENEWAL_PATH: &str = "/flotilla/join/v1/node/renew";
/// The share of a certificate's lifetime after which it is renewed: a
/// random point between these (kubelet's 70 % to 90 %).
const RENEW_AFTER: (f64, f64) = (0.7, 0.9);
/// Delays between failed renewals.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The longest the renewal task waits before looking at the clock again.
const CHECK_INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);
/// How long one renewal call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Renews `tls` through `client` (which must present `tls`, as
/// [`KubeletTls::api_client`] does) for as long as the task runs.
pub async fn run(client: kube::Client, tls: KubeletTls) {
    loop {
        let certificate = tls.certificate();
        let due = renewal_due(&certificate, random_fraction());
        tracing::debug!(
            expires_in_s = seconds_until(certificate.not_after),
            renew_in_s = seconds_until(due),
            "node certificate"
        );
        // The wall clock decides expiry, not tokio's monotonic one: look
        // at it again at least daily (a suspended machine wakes late).
        while let Ok(wait) = due.duration_since(SystemTime::now()) {
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait.min(CHECK_INTERVAL_MAX)).await;
        }
        renew(&client, &tls, &certificate).await;
    }
}

/// Asks until a new certificate is in use.
async fn renew(client: &kube::Client, tls: &KubeletTls, current: &CertificateInfo) {
    let mut delay = RETRY_FIRST;
    loop {
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, request(client)).await {
            Ok(Ok(credentials)) => tls.replace(&credentials).map_err(|e| e.to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(
                    expires_in_s = seconds_until(tls.certificate().not_after),
                    "renewed the node certificate"
                );
                return;
            }
            Err(error) if SystemTime::now() < current.not_after => {
                tracing::warn!(
                    %error,
                    expires_in_s = seconds_until(current.not_after),
                    "renewing the node certificate failed; retrying"
                );
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "the node certificate has expired and could not be renewed; the node \
                     must join again: `kubectl delete node NAME`, then restart the agent \
                     with a new --token"
                );
            }
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(RETRY_MAX);
    }
}

async fn request(client: &kube::Client) -> Result<Credentials, kube::Error> {
    let request = http::Request::post(RENEWAL_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(b"{}".to_vec())
        .map_err(kube::Error::HttpError)?;
    client.request(request).await
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// `fraction` (0 to 1) of the way from 70 % to 90 % of its lifetime.
fn renewal_due(certificate: &CertificateInfo, fraction: f64) -> SystemTime {
    let lifetime = certificate
        .not_after
        .duration_since(certificate.not_before)
        .unwrap_or(Duration::ZERO);
    let (low, high) = RENEW_AFTER;
    let share = low + (high - low) * fraction.clamp(0.0, 1.0);
    certificate.not_before + lifetime.mul_f64(share)
}

/// A number from 0 to 1, different in each process and call: the hasher
/// std seeds at random for each map is randomness enough to spread nodes.
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn seconds_until(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::now()) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: Duration) -> CertificateInfo {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        CertificateInfo {
            subject: flotilla_pki::CertificateSubject {
                common_name: "system:node:n".into(),
                organizations: vec!["system:nodes".into()],
            },
            names: Vec::new(),
            not_before,
            not_after: not_before + lifetime,
        }
    }

    #[test]
    fn renewal_falls_between_seventy_and_ninety_percent_of_the_lifetime() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let certificate = issued(year);
        let at = |fraction| {
            renewal_due(&certificate, fraction)
                .duration_since(certificate.not_before)
                .unwrap()
        };
        assert_eq!(at(0.0), year.mul_f64(0.7));
        assert_eq!(at(1.0), year.mul_f64(0.9));
        assert_eq!(at(0.5), year.mul_f64(0.8));
        // Out-of-range fractions stay within the window.
        assert_eq!(at(7.0), year.mul_f64(0.9));
        for _ in 0..100 {
            let fraction = random_fraction();
            assert!((0.0..1.0).contains(&fraction), "{fraction}");
        }
    }

    #[test]
    fn a_certificate_with_no_lifetime_is_due_at_once() {
        let certificate = issued(Duration::ZERO);
        assert_eq!(renewal_due(&certificate, 0.5), certificate.not_before);
    }
}
