//! The AWS SDK configuration of every xtask command (image push, launcher):
//! built in one place so that credentials, region, endpoint and retries are
//! resolved the same way everywhere.

use std::time::Duration;

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
