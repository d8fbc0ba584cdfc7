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

/// The engine's CPU architecture in Go's (and image configs') words:
/// `amd64`, `arm64`; what it builds and runs natively.
pub async fn architecture(docker: &Docker) -> Result<String> {
    let info = docker
        .info()
        .await
        .map_err(|e| anyhow!("asking the Docker engine for its architecture: {e}"))?;
    Ok(go_arch(info.architecture.as_deref().unwrap_or_default()))
}

/// The `GOARCH` words [`go_arch`] gives for the machines images are built
/// on (a tag's suffix is read back as one of them).
pub const ARCHITECTURES: [&str; 7] = [
    "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64",
];

/// `uname -m`'s word (the engine's `Architecture`) as Go's `GOARCH`.
pub fn go_arch(machine: &str) -> String {
    match machine {
        "x86_64" | "amd64" => "amd64".into(),
        "aarch64" | "arm64" => "arm64".into(),
        m if m.starts_with("armv") || m == "arm" => "arm".into(),
        "i386" | "i486" | "i586" | "i686" | "386" => "386".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// Follow a `create_image` stream (a pull, an import) to its end: an error
/// the engine reports in it is the error, `what` naming the work.
pub async fn created(
    stream: impl futures_util::Stream<
        Item = Result<bollard::models::CreateImageInfo, bollard::errors::Error>,
    >,
    what: &str,
) -> Result<()> {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| anyhow!("{what}: {e}"))?;
        if let Some(detail) = info.error_detail {
            return Err(anyhow!("{what}: {}", detail.message.unwrap_or_default()));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::go_arch;

    #[test]
    fn machine_names_are_gos() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("arm64"), "arm64");
        assert_eq!(go_arch("S390X"), "s390x");
        assert_eq!(go_arch("armv7l"), "arm");
        assert_eq!(go_arch("i686"), "386");
        // What it gives is what a tag's suffix is read back as.
        for m in [
            "x86_64", "aarch64", "armv7l", "i686", "ppc64le", "s390x", "riscv64",
        ] {
            assert!(super::ARCHITECTURES.contains(&go_arch(m).as_str()), "{m}");
        }
    }
}
