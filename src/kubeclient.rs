//! Building the Kubernetes client from a kubeconfig, the default chain, or in-cluster config.

use crate::{Error, Result};

/// A client from `kubeconfig` (one file), else `~/.kube/config` or the in-cluster
/// configuration; `apiserver` replaces the server URL (the Go controller's `--apiserver`).
pub async fn client(kubeconfig: Option<&str>, apiserver: Option<&str>) -> Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("kubeconfig {path}: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config(format!("kubeconfig {path}: {e}")))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            Error::Config(format!("no kubeconfig or in-cluster configuration: {e}"))
        })?,
    };
    if let Some(url) = apiserver {
        config.cluster_url = url
            .parse()
            .map_err(|e| Error::Config(format!("--apiserver {url}: {e}")))?;
    }
    Ok(kube::Client::try_from(config)?)
}
