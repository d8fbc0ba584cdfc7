//! The AWS SDK configuration of every xtask command (image push, launcher):
//! built in one place so that credentials, region, endpoint and retries are
//! resolved the same way everywhere, and loaded once per command ([`Session`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The SDK configuration: the standard credential chain (environment, profile,
/// SSO, web identity as GitHub OIDC uses it, ECS/IMDS), `profile` and `region`
/// overriding the environment when given, `AWS_ENDPOINT_URL` honoured (the
/// tests point it at the AWS emulator), standard retries bounded to 3
/// attempts, and connect/operation timeouts so that a dead endpoint fails
/// within a minute instead of hanging.
pub async fn sdk_config(profile: Option<&str>, region: Option<&str>) -> SdkConfig {
    let region = RegionProviderChain::first_try(region.map(|r| Region::new(r.to_string())))
        .or_default_provider();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An error and its sources, `top: cause: cause`: the SDK's errors keep what
/// went wrong in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub const NO_CREDENTIALS: &str = "no AWS credentials found: run `aws configure` (or `aws sso login --profile NAME` and pass --profile NAME), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";

/// Fail early, with one line, when the credential chain has nothing.
pub async fn require_credentials(config: &SdkConfig) -> Result<()> {
    use aws_credential_types::provider::ProvideCredentials;
    let provider = config.credentials_provider().context(NO_CREDENTIALS)?;
    match tokio::time::timeout(Duration::from_secs(20), provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        // The cause (a profile that is not defined, an expired SSO session)
        // is in the sources, not in the top error's text.
        Ok(Err(e)) => bail!("{NO_CREDENTIALS} ({})", error_chain(&e)),
        Err(_) => bail!("{NO_CREDENTIALS} (looking for them timed out)"),
    }
}

/// One command's AWS access: its `--profile` and `--region` flags, and per
/// region one configuration, loaded and its credentials looked up on first
/// use. A launch needs AWS in up to four steps (the credentials check before
/// listing S3 data, an `experiment:<name>` warm start, the ECR push, the
/// SageMaker backend); they share one credential lookup, which for SSO or
/// instance credentials is a network round trip. Clones share the cache.
#[derive(Clone, Default)]
pub struct Session {
    profile: Option<String>,
    region: Option<String>,
    loaded: Arc<tokio::sync::Mutex<Loaded>>,
}

/// Each region's configuration (`None`: the region of the SDK's own chain).
type Loaded = Vec<(Option<String>, SdkConfig)>;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("profile", &self.profile)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(profile: Option<String>, region: Option<String>) -> Self {
        Session {
            profile,
            region,
            loaded: Default::default(),
        }
    }

    /// The region requests go to: the `--region` flag, else `fallback` (an
    /// experiment's resolved region), else `None` for the SDK's own chain.
    pub fn region(&self, fallback: Option<&str>) -> Option<String> {
        self.region.clone().or(fallback.map(str::to_string))
    }

    /// How sca-train's S3 sources (the launcher's data listing and model
    /// pinning) reach AWS: this session's profile and region.
    pub fn s3_access(&self, fallback_region: &str) -> sca_data::S3Access {
        sca_data::S3Access {
            profile: self.profile.clone(),
            region: Some(self.region_or(fallback_region)),
        }
    }

    /// [`Session::region`] where the caller has a fallback.
    pub fn region_or(&self, fallback: &str) -> String {
        self.region.clone().unwrap_or_else(|| fallback.to_string())
    }

    /// The configuration for [`Session::region`]`(fallback)`, with
    /// credentials checked ([`require_credentials`]).
    pub async fn config(&self, fallback: Option<&str>) -> Result<SdkConfig> {
        let profile = self.profile.clone();
        self.get_or_load(self.region(fallback), |region| async move {
            let config = sdk_config(profile.as_deref(), region.as_deref()).await;
            if let Err(e) = require_credentials(&config).await {
                // The SDK goes on down the chain past a profile that is not
                // defined; its last provider's error does not say so.
                let Some(profile) = profile else { return Err(e) };
                bail!("{e}; is profile `{profile}` (--profile) defined in ~/.aws/config or ~/.aws/credentials (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)?");
            }
            Ok(config)
        })
        .await
    }

    async fn get_or_load<F, Fut>(&self, region: Option<String>, load: F) -> Result<SdkConfig>
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: Future<Output = Result<SdkConfig>>,
    {
        // Held across the load: a second step waits for the first's lookup
        // instead of starting its own.
        let mut loaded = self.loaded.lock().await;
        if let Some((_, config)) = loaded.iter().find(|(r, _)| *r == region) {
            return Ok(config.clone());
        }
        let config = load(region.clone()).await?;
        loaded.push((region, config.clone()));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_session_loads_each_region_once_and_clones_share_it() {
        let session = Session::new(Some("p".into()), None);
        let loads = AtomicUsize::new(0);
        let load = |region: Option<String>| {
            loads.fetch_add(1, Ordering::SeqCst);
            async move { Ok(SdkConfig::builder().region(region.map(Region::new)).build()) }
        };
        let clone = session.clone();
        let a = session
            .get_or_load(session.region(Some("us-west-2")), load)
            .await
            .unwrap();
        let b = clone
            .get_or_load(clone.region(Some("us-west-2")), load)
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(a.region().map(|r| r.as_ref()), Some("us-west-2"));
        assert_eq!(b.region(), a.region());
        session
            .get_or_load(session.region(Some("eu-central-1")), load)
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_remembered() {
        let session = Session::default();
        let err = session
            .get_or_load(None, |_| async { bail!("{NO_CREDENTIALS}") })
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("no AWS credentials"), "{err}");
        let ok = session
            .get_or_load(None, |_| async { Ok(SdkConfig::builder().build()) })
            .await;
        assert!(ok.is_ok());
    }

    #[test]
    fn the_region_flag_wins_over_the_experiments() {
        let flagged = Session::new(None, Some("eu-west-1".into()));
        assert_eq!(
            flagged.region(Some("us-west-2")).as_deref(),
            Some("eu-west-1")
        );
        let plain = Session::new(None, None);
        assert_eq!(
            plain.region(Some("us-west-2")).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(plain.region(None), None);
    }
}
