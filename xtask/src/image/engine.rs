//! The connection to the Docker engine (`DOCKER_HOST` honoured), with an
//! error that says where it looked and how to start one.

use anyhow::{anyhow, Result};
use bollard::Docker;

/// Where the engine is expected: `DOCKER_HOST` or the default socket.
pub fn engine_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// Connect to the engine and agree on an API version (older engines, e.g.
/// Debian's 20.10, speak an older API than bollard's default).
pub async fn connect() -> Result<Docker> {
    let host = engine_host();
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow!(
            "cannot reach the Docker engine at {host}: {e}\n\
             Start one with `cargo xtask services up` (and export the DOCKER_HOST it prints), or point DOCKER_HOST at a running engine."
        )
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(&e))?;
    let docker = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        docker.negotiate_version(),
    )
    .await
    .map_err(|_| unreachable(&"no answer within 15 s"))?
    .map_err(|e| unreachable(&e))?;
    Ok(docker)
}

/// Whether a bollard error is the engine's "no such image/tag" answer.
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
