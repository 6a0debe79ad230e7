//! The Lease store: what the election reads and writes of its `coordination.k8s.io/v1` Lease,
//! every write bound to the resourceVersion it was decided on ([`KubeLease`]; the election's
//! tests use a fake [`LeaseStore`]).

use std::future::Future;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::instrument;

use super::leader::LeaseSettings;

/// What a replica saw of the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub version: String,
    /// `None` when free (released, or never held).
    pub holder: Option<String>,
    /// The holder's `leaseDurationSeconds`.
    pub duration: Option<Duration>,
    pub transitions: i32,
}

/// The Lease content this replica writes to hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub holder: String,
    pub duration_seconds: i32,
    pub transitions: i32,
    /// Taken over (sets `acquireTime`), rather than renewed.
    pub acquired: bool,
}

/// Why a Lease call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The resourceVersion precondition failed, or the Lease was created meanwhile.
    #[error("conflict: the lease changed meanwhile")]
    Conflict,
    #[error("{0}")]
    Failed(String),
}

/// The Lease calls the election makes. [`KubeLease`] is the real one; the tests use a fake.
pub trait LeaseStore: Send + Sync {
    fn get(&self) -> impl Future<Output = Result<Option<Observed>, StoreError>> + Send;
    /// Creates the Lease held by us; returns the new resourceVersion.
    fn create(&self, holding: &Holding) -> impl Future<Output = Result<String, StoreError>> + Send;
    /// Writes `holding` (or frees the Lease, `None`) if the Lease is still at `version`.
    fn update(
        &self,
        version: &str,
        holding: Option<&Holding>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// The Lease in the cluster.
pub struct KubeLease {
    api: Api<Lease>,
    name: String,
    field_manager: String,
}

impl KubeLease {
    pub fn new(client: Client, settings: &LeaseSettings) -> Self {
        KubeLease {
            api: Api::namespaced(client, &settings.namespace),
            name: settings.name.clone(),
            field_manager: "kube-aws-iam-controller".into(),
        }
    }

    fn spec(holding: &Holding) -> serde_json::Value {
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut spec = json!({
            "holderIdentity": holding.holder,
            "leaseDurationSeconds": holding.duration_seconds,
            "renewTime": now,
            "leaseTransitions": holding.transitions,
        });
        if holding.acquired {
            spec["acquireTime"] = json!(now);
        }
        spec
    }
}

fn store_error(e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict,
        other => StoreError::Failed(other.to_string()),
    }
}

fn version_of(lease: &Lease) -> Result<String, StoreError> {
    lease
        .resource_version()
        .ok_or_else(|| StoreError::Failed("the lease has no resourceVersion".into()))
}

impl LeaseStore for KubeLease {
    #[instrument(name = "lease_get", skip_all, fields(lease = %self.name))]
    async fn get(&self) -> Result<Option<Observed>, StoreError> {
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(store_error)? else {
            return Ok(None);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        Ok(Some(Observed {
            version: version_of(&lease)?,
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            transitions: spec.lease_transitions.unwrap_or(0),
        }))
    }

    #[instrument(name = "lease_create", skip_all, fields(lease = %self.name))]
    async fn create(&self, holding: &Holding) -> Result<String, StoreError> {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name},
            "spec": Self::spec(holding),
        }))
        .map_err(|e| StoreError::Failed(e.to_string()))?;
        let pp = PostParams {
            field_manager: Some(self.field_manager.clone()),
            ..PostParams::default()
        };
        let created = self.api.create(&pp, &lease).await.map_err(store_error)?;
        version_of(&created)
    }

    #[instrument(name = "lease_update", skip_all, fields(lease = %self.name, release = holding.is_none()))]
    async fn update(&self, version: &str, holding: Option<&Holding>) -> Result<String, StoreError> {
        // A merge patch that names the resourceVersion is applied only at that version.
        let spec = match holding {
            Some(h) => Self::spec(h),
            None => json!({
                "holderIdentity": null,
                "leaseDurationSeconds": null,
                "acquireTime": null,
                "renewTime": null,
            }),
        };
        let patch = json!({"metadata": {"resourceVersion": version}, "spec": spec});
        let pp = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        let patched = self
            .api
            .patch(&self.name, &pp, &Patch::Merge(&patch))
            .await
            .map_err(store_error)?;
        version_of(&patched)
    }
}
