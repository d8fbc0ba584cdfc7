//! `image push`: ECR login (`GetAuthorizationToken`), repository creation
//! (scan on push, immutable tags), push through the engine unless the
//! registry already has the tag, and the registry digest of what was pushed.
//!
//! The digest is the registry's own answer (the engine's distribution
//! endpoint, which asks the registry for the tag's manifest), cross-checked
//! with the image's `RepoDigests`; bollard's push stream carries none.
//! Credentials never reach a log: `EcrLogin`'s `Debug` hides the password.
//! The ECR token goes to ECR hosts only: a `--registry` elsewhere gets the
//! user's own credentials ([`REGISTRY_USERNAME`], [`REGISTRY_PASSWORD`]) or
//! none, never the token, which would let that host push to the account's
//! repositories; such a push makes no ECR call at all (no repository is
//! created in the session's account for an image that goes elsewhere).
//! The engine tags the built image by its id, and the pushed tag must still
//! name that id afterwards: a concurrent build that moved the name is
//! caught, not pushed in this build's place.

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_ecr::error::DisplayErrorContext;
use aws_sdk_ecr::types::{ImageScanningConfiguration, ImageTagMutability};
use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;

use super::build::{self, BuildOptions};
use super::progress::Bar;
use crate::aws;

/// Everything `ensure_pushed` needs.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub build: BuildOptions,
    /// Push here instead of the ECR registry (`HOST:PORT`): with the ECR
    /// token if it is an ECR host, else with [`REGISTRY_USERNAME`] and
    /// [`REGISTRY_PASSWORD`] (or anonymously).
    pub registry: Option<String>,
    /// The ECR repository name.
    pub repository: String,
    /// The command's AWS access (`--profile`, `--region`).
    pub aws: aws::Session,
    /// The region when `aws` has no `--region`: the workspace's or the
    /// experiment's (`None`: the SDK's chain).
    pub region: Option<String>,
    /// Have the image in this engine too (the docker backend runs it
    /// here): pulled by digest when the registry already had the tag and
    /// the engine does not have it (another machine pushed it, or it was
    /// removed here).
    pub pull: bool,
}

/// The result of a push: what the launcher hands to SageMaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pushed {
    /// `HOST/REPO`.
    pub repository: String,
    pub tag: String,
    /// `sha256:...` manifest digest in the registry.
    pub digest: String,
    /// `HOST/REPO@sha256:...`.
    pub reference: String,
    /// False when the registry already had the tag and nothing was pushed.
    pub pushed: bool,
}

/// Registry credentials from ECR.
#[derive(Clone)]
pub struct EcrLogin {
    /// The registry host, e.g. `123456789012.dkr.ecr.us-west-2.amazonaws.com`.
    pub registry: String,
    pub username: String,
    password: String,
}

impl std::fmt::Debug for EcrLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrLogin")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EcrLogin {
    /// Credentials for the engine, for `registry` (the ECR host or an override).
    pub fn credentials(&self, registry: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        }
    }
}

/// The environment variables holding the credentials of a `--registry`
/// that is not ECR.
pub const REGISTRY_USERNAME: &str = "SCA_REGISTRY_USERNAME";
pub const REGISTRY_PASSWORD: &str = "SCA_REGISTRY_PASSWORD";

/// Whether `host` (`HOST[:PORT]`) is an ECR registry:
/// `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]`.
pub fn is_ecr_host(host: &str) -> bool {
    let name = host.split(':').next().unwrap_or("").to_ascii_lowercase();
    let Some(rest) = name
        .strip_suffix(".amazonaws.com")
        .or_else(|| name.strip_suffix(".amazonaws.com.cn"))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    matches!(parts.as_slice(),
        [account, "dkr", ecr, region]
            if account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && (*ecr == "ecr" || *ecr == "ecr-fips")
                && !region.is_empty()
                && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The credentials to send to `host`: the ECR login's for ECR hosts; for
/// another registry the user's own, from `var(REGISTRY_USERNAME)` and
/// `var(REGISTRY_PASSWORD)`, or none when neither is set.
pub fn credentials_for(
    login: &EcrLogin,
    host: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<DockerCredentials> {
    if host == login.registry || is_ecr_host(host) {
        return Ok(login.credentials(host));
    }
    other_credentials(host, var)
}

/// The credentials for `host`, a registry other than ECR: the user's own,
/// from `var(REGISTRY_USERNAME)` and `var(REGISTRY_PASSWORD)`, or none when
/// neither is set.
fn other_credentials(
    host: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<DockerCredentials> {
    match (var(REGISTRY_USERNAME), var(REGISTRY_PASSWORD)) {
        (Some(username), Some(password)) => Ok(DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(host.to_string()),
            ..Default::default()
        }),
        (None, None) => Ok(DockerCredentials {
            serveraddress: Some(host.to_string()),
            ..Default::default()
        }),
        _ => bail!(
            "--registry {host} is not an ECR registry, so the ECR token is not sent to it: set both {REGISTRY_USERNAME} and {REGISTRY_PASSWORD} to its own credentials (or neither, to push anonymously)"
        ),
    }
}

/// `reference` (`HOST/REPO@sha256:…`) in the engine, pulled with
/// `credentials` unless it is there already.
async fn pull_if_missing(
    docker: &Docker,
    reference: &str,
    credentials: &DockerCredentials,
) -> Result<()> {
    match docker.inspect_image(reference).await {
        Ok(_) => return Ok(()),
        Err(e) if super::engine::is_not_found(&e) => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {reference}")),
    }
    eprintln!("pulling {reference}: the engine does not have it");
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_image(reference)
        .build();
    let stream = docker.create_image(Some(options), None, Some(credentials.clone()));
    super::engine::created(stream, &format!("pulling {reference}")).await
}

/// `GetAuthorizationToken`, decoded (`base64("AWS:<password>")`).
pub async fn ecr_login(ecr: &aws_sdk_ecr::Client) -> Result<EcrLogin> {
    let out = ecr.get_authorization_token().send().await.map_err(|e| {
        anyhow!(
            "ECR GetAuthorizationToken failed: {}",
            DisplayErrorContext(e)
        )
    })?;
    let data = out
        .authorization_data()
        .first()
        .context("ECR returned no authorization data")?;
    let token = data
        .authorization_token()
        .context("ECR returned no authorization token")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .context("the ECR authorization token is not base64")?;
    let decoded = String::from_utf8(decoded).context("the ECR authorization token is not UTF-8")?;
    let (username, password) = decoded
        .split_once(':')
        .context("the ECR authorization token is not USER:PASSWORD")?;
    let endpoint = data
        .proxy_endpoint()
        .context("ECR returned no proxy endpoint")?;
    let registry = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    Ok(EcrLogin {
        registry,
        username: username.into(),
        password: password.into(),
    })
}

/// Create the repository if it is missing: scan on push, immutable tags.
pub async fn ensure_repository(ecr: &aws_sdk_ecr::Client, name: &str) -> Result<()> {
    match ecr
        .describe_repositories()
        .repository_names(name)
        .send()
        .await
    {
        Ok(_) => return Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_repository_not_found_exception()) => {}
        Err(e) => bail!(
            "ECR DescribeRepositories {name} failed: {}",
            DisplayErrorContext(e)
        ),
    }
    let created = ecr
        .create_repository()
        .repository_name(name)
        .image_tag_mutability(ImageTagMutability::Immutable)
        .image_scanning_configuration(
            ImageScanningConfiguration::builder()
                .scan_on_push(true)
                .build(),
        )
        .send()
        .await;
    match created {
        Ok(_) => {
            eprintln!("created ECR repository {name} (scan on push, immutable tags)");
            Ok(())
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_repository_already_exists_exception()) =>
        {
            Ok(())
        }
        Err(e) => bail!(
            "ECR CreateRepository {name} failed: {}",
            DisplayErrorContext(e)
        ),
    }
}

/// The registry's digest for `reference` (`HOST/REPO:TAG`), `None` when the
/// registry has no such tag.
pub async fn registry_digest(
    docker: &Docker,
    reference: &str,
    credentials: &DockerCredentials,
) -> Result<Option<String>> {
    match docker
        .inspect_registry_image(reference, Some(credentials.clone()))
        .await
    {
        Ok(inspect) => Ok(Some(
            inspect
                .descriptor
                .digest
                .context("the registry returned no digest")?,
        )),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        }) if status_code == 404
            || message.contains("manifest unknown")
            || message.contains("not found") =>
        {
            Ok(None)
        }
        Err(e) => Err(anyhow!("asking the registry for {reference}: {e}")),
    }
}

/// Push the image for `options.build` unless the registry has its tag; return
/// the registry digest.
pub async fn ensure_pushed(docker: &Docker, options: &PushOptions) -> Result<Pushed> {
    let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
    let (host, credentials) = match &options.registry {
        // Another registry: its own credentials, and no ECR call (no token
        // fetched, no repository created in the session's account).
        Some(host) if !is_ecr_host(host) => (host.clone(), other_credentials(host, var)?),
        _ => {
            let config = options.aws.config(options.region.as_deref()).await?;
            let ecr = aws_sdk_ecr::Client::new(&config);
            let login = ecr_login(&ecr).await?;
            ensure_repository(&ecr, &options.repository).await?;
            let host = options
                .registry
                .clone()
                .unwrap_or_else(|| login.registry.clone());
            let credentials = credentials_for(&login, &host, var)?;
            (host, credentials)
        }
    };
    let repository = format!("{host}/{}", options.repository);

    let prepared = build::prepare(docker, &options.build).await?;
    let target = format!("{repository}:{}", prepared.tag);
    if let Some(digest) = registry_digest(docker, &target, &credentials).await? {
        eprintln!("{target} is already in the registry: nothing to push");
        let reference = format!("{repository}@{digest}");
        if options.pull {
            pull_if_missing(docker, &reference, &credentials).await?;
        }
        return Ok(Pushed {
            reference,
            repository,
            tag: prepared.tag,
            digest,
            pushed: false,
        });
    }
    let built = build::build(docker, &prepared, &options.build).await?;
    // By id, not by name: a concurrent build may have moved the name.
    docker
        .tag_image(
            &built.id,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(&repository)
                    .tag(&prepared.tag)
                    .build(),
            ),
        )
        .await
        .with_context(|| format!("tagging {} ({}) as {target}", built.reference, built.id))?;

    let bar = Bar::spinner("push");
    let mut stream = docker.push_image(
        &repository,
        Some(
            PushImageOptionsBuilder::default()
                .tag(&prepared.tag)
                .build(),
        ),
        Some(credentials.clone()),
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    bar.abandon();
                    bail!(
                        "pushing {target} failed: {}",
                        detail.message.unwrap_or_default()
                    );
                }
                if let Some(status) = info.status {
                    match info
                        .progress_detail
                        .and_then(|p| Some((p.current?, p.total?)))
                    {
                        Some((current, total)) if total > 0 => {
                            if super::progress::interactive() {
                                bar.status(&format!(
                                    "{status} {}/{}",
                                    super::context::human_bytes(current as u64),
                                    super::context::human_bytes(total as u64)
                                ));
                            }
                        }
                        _ => bar.status(&status),
                    }
                }
            }
            Err(e) => {
                bar.abandon();
                return Err(anyhow!("pushing {target} failed: {e}"));
            }
        }
    }
    bar.finish("done");

    let digest = registry_digest(docker, &target, &credentials)
        .await?
        .with_context(|| format!("the push finished but the registry has no {target}"))?;
    // Cross-check with the engine's record of the push.
    let inspect = docker
        .inspect_image(&target)
        .await
        .with_context(|| format!("inspecting {target}"))?;
    if inspect.id.as_deref() != Some(built.id.as_str()) {
        bail!(
            "{target} was moved to another image ({}) while {} was pushed: push again",
            inspect.id.as_deref().unwrap_or("?"),
            built.id
        );
    }
    let repo_digests = inspect.repo_digests.unwrap_or_default();
    let expected = format!("{repository}@{digest}");
    if !repo_digests.iter().any(|d| d == &expected) {
        bail!("the registry's digest {digest} for {target} is not among the image's RepoDigests {repo_digests:?}");
    }
    Ok(Pushed {
        repository,
        tag: prepared.tag,
        digest,
        reference: expected,
        pushed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> EcrLogin {
        EcrLogin {
            registry: "123456789012.dkr.ecr.us-west-2.amazonaws.com".into(),
            username: "AWS".into(),
            password: "ecr-token".into(),
        }
    }

    #[test]
    fn ecr_hosts_are_recognised_and_look_alikes_are_not() {
        for host in [
            "123456789012.dkr.ecr.us-west-2.amazonaws.com",
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "123456789012.dkr.ecr.eu-central-1.amazonaws.com:443",
        ] {
            assert!(is_ecr_host(host), "{host}");
        }
        for host in [
            "127.0.0.1:5000",
            "registry.example.com",
            "123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.io",
            "evil.io/123456789012.dkr.ecr.us-west-2.amazonaws.com",
            "12345.dkr.ecr.us-west-2.amazonaws.com",
            "123456789012.dkr.ecr.us-west-2.notamazonaws.com",
            "x.123456789012.dkr.ecr.us-west-2.amazonaws.com",
        ] {
            assert!(!is_ecr_host(host), "{host}");
        }
    }

    #[test]
    fn the_ecr_token_goes_to_ecr_hosts_only() {
        let none = |_: &str| None;
        let c = credentials_for(&login(), &login().registry, none).unwrap();
        assert_eq!(c.password.as_deref(), Some("ecr-token"));
        let other_region = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
        let c = credentials_for(&login(), other_region, none).unwrap();
        assert_eq!(c.password.as_deref(), Some("ecr-token"));

        // Another registry: anonymous without credentials of its own ...
        let c = credentials_for(&login(), "127.0.0.1:5000", none).unwrap();
        assert_eq!((c.username, c.password), (None, None));
        // ... or the user's own, never the token.
        let own = |v: &str| match v {
            REGISTRY_USERNAME => Some("me".to_string()),
            REGISTRY_PASSWORD => Some("mine".to_string()),
            _ => None,
        };
        let c = credentials_for(&login(), "registry.example.com", own).unwrap();
        assert_eq!(c.username.as_deref(), Some("me"));
        assert_eq!(c.password.as_deref(), Some("mine"));
        let half = |v: &str| (v == REGISTRY_USERNAME).then(|| "me".to_string());
        let e = credentials_for(&login(), "registry.example.com", half)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not an ECR registry") && e.contains(REGISTRY_PASSWORD),
            "{e}"
        );
    }
}
