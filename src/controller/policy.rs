//! The namespace role policy at run time: the mode, the controller's own identities once learned,
//! and the watched Namespaces' annotations. The decision itself is `crate::policy::evaluate`.

use std::collections::BTreeMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use crate::aws::arn::{BaseRoleArn, RoleArn};
use crate::aws::sts::StsIssuer;
use crate::crd::AWSIAMRole;
use crate::policy::{self, Guard, PolicyInput, PolicyMode, Verdict};

/// Namespaces as the controller caches them: metadata only.
pub type NamespaceStore = Store<PartialObjectMeta<Namespace>>;

/// What a reconcile asks before it calls STS.
pub struct PolicyContext {
    pub mode: PolicyMode,
    /// The controller's own AWSIAMRole (namespace, name).
    own: Option<(String, String)>,
    /// `None` until the controller knows its own identity: nothing is issued before.
    guard: RwLock<Option<Guard>>,
    /// The Namespace cache and whether it has been filled.
    namespaces: OnceLock<(NamespaceStore, watch::Receiver<bool>)>,
    /// Turns true once the guard is in force (the controller knows its own identity).
    identity: watch::Sender<bool>,
}

/// The answer for one AWSIAMRole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The policy's verdict.
    Verdict(Verdict),
    /// The controller does not know its own identity yet (`GetCallerIdentity` fails): neither
    /// issue nor withdraw; the role says so in its status and backs off (every role is
    /// reconciled again once the identity is learned).
    IdentityUnknown,
    /// The role's Namespace is not in the cache (yet): neither issue nor withdraw; look again
    /// soon (a Namespace new to the cache reconciles its roles, too).
    NamespaceUnknown(&'static str),
}

impl PolicyContext {
    /// `guard` is `None` while the controller's own identity is still to be learned
    /// ([`PolicyContext::set_guard`]).
    pub fn new(mode: PolicyMode, own: Option<(String, String)>, guard: Option<Guard>) -> Self {
        PolicyContext {
            mode,
            own,
            identity: watch::Sender::new(guard.is_some()),
            guard: RwLock::new(guard),
            namespaces: OnceLock::new(),
        }
    }

    /// No namespace policy and no identity to protect: what tests of other features use.
    pub fn permissive() -> Self {
        PolicyContext::new(PolicyMode::None, None, Some(Guard::default()))
    }

    pub fn set_guard(&self, guard: Guard) {
        if let Ok(mut g) = self.guard.write() {
            *g = Some(guard);
            self.identity.send_replace(true);
        }
    }

    /// Turns true once the controller knows its own identity (wakes on [`Self::set_guard`]).
    pub fn identity_changes(&self) -> watch::Receiver<bool> {
        self.identity.subscribe()
    }

    /// Resolves once the controller knows its own identity, or after `limit`: a reconcile at
    /// start waits for the first `GetCallerIdentity` instead of reporting a role as waiting
    /// for it.
    pub async fn identity_known(&self, limit: Duration) {
        let mut known = self.identity.subscribe();
        let _ = tokio::time::timeout(limit, known.wait_for(|k| *k)).await;
    }

    /// Gives the reconciler the Namespace cache (once, from the watch in `controller::run`) and
    /// the flag that turns true once its initial list is in.
    pub fn attach(&self, store: NamespaceStore, synced: watch::Receiver<bool>) {
        let _ = self.namespaces.set((store, synced));
    }

    /// Resolves once the policy can judge every namespace: at once without a namespace policy
    /// or before the cache is attached (then [`Self::judge`] answers `Pending`), else when the
    /// Namespace cache is filled. A reconcile at start waits for it instead of finding its
    /// Namespace missing and looking again `--backoff-base` later.
    pub async fn namespaces_synced(&self) {
        if !self.watches_namespaces() {
            return;
        }
        if let Some((_, synced)) = self.namespaces.get() {
            let _ = synced.clone().wait_for(|s| *s).await;
        }
    }

    /// True when the mode needs the Namespaces' annotations.
    pub fn watches_namespaces(&self) -> bool {
        self.mode != PolicyMode::None
    }

    /// What the policy needs to judge `role`, read now (observe); [`PolicyView::judge`] then
    /// decides without touching any shared state.
    pub fn view(&self, role: &AWSIAMRole) -> PolicyView {
        let namespace = role.namespace().unwrap_or_default();
        let own = self
            .own
            .as_ref()
            .is_some_and(|(n, name)| *n == namespace && *name == role.name_any());
        let guard = match self.guard.read() {
            Ok(guard) => match guard.as_ref() {
                Some(guard) => guard.clone(),
                None => return PolicyView::IdentityUnknown,
            },
            Err(_) => return PolicyView::IdentityUnknown,
        };
        let annotations = if self.watches_namespaces() && !own {
            let Some((store, _)) = self.namespaces.get() else {
                return PolicyView::NamespaceUnknown("namespaces are not watched yet");
            };
            match store.get(&ObjectRef::new(&namespace)) {
                Some(n) => Some(n.annotations().clone()),
                None => {
                    return PolicyView::NamespaceUnknown("the namespace is not in the cache yet");
                }
            }
        } else {
            None
        };
        PolicyView::Known {
            mode: self.mode,
            namespace,
            annotations,
            guard,
            own,
        }
    }

    /// The judgement for `role`, which resolves to `arn`.
    pub fn judge(&self, role: &AWSIAMRole, arn: &RoleArn, base: Option<&BaseRoleArn>) -> Judgement {
        self.view(role).judge(arn, base)
    }
}

/// The namespace role policy's inputs for one AWSIAMRole, as observed.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyView {
    Known {
        mode: PolicyMode,
        namespace: String,
        /// The Namespace's annotations (`None` when the mode or the own role needs none).
        annotations: Option<BTreeMap<String, String>>,
        guard: Guard,
        /// The controller's own AWSIAMRole (`--own-awsiamrole`).
        own: bool,
    },
    /// See [`Judgement::IdentityUnknown`].
    IdentityUnknown,
    /// See [`Judgement::NamespaceUnknown`].
    NamespaceUnknown(&'static str),
}

impl PolicyView {
    /// No namespace policy and nothing protected: every role is permitted.
    pub fn permissive() -> Self {
        PolicyView::Known {
            mode: PolicyMode::None,
            namespace: String::new(),
            annotations: None,
            guard: Guard::default(),
            own: false,
        }
    }

    /// The judgement of `arn` (pure).
    pub fn judge(&self, arn: &RoleArn, base: Option<&BaseRoleArn>) -> Judgement {
        match self {
            PolicyView::Known {
                mode,
                namespace,
                annotations,
                guard,
                own,
            } => Judgement::Verdict(policy::evaluate(&PolicyInput {
                mode: *mode,
                namespace,
                annotations: annotations.as_ref(),
                arn,
                base,
                guard,
                own: *own,
            })),
            PolicyView::IdentityUnknown => Judgement::IdentityUnknown,
            PolicyView::NamespaceUnknown(why) => Judgement::NamespaceUnknown(why),
        }
    }
}

/// Whether a watched Namespace's event reconciles the AWSIAMRoles in it, judged against the
/// cache's copy (`None`: not cached) before the event is applied: when its annotations (the
/// policy's input) changed, or when it is new to a cache that was already filled (a Namespace
/// created since, or during a watch outage: AWSIAMRoles in it may be waiting for it). The
/// initial list triggers nothing: every AWSIAMRole is reconciled by its own initial list, after
/// the Namespace cache is filled (`PolicyContext::namespaces_synced`); triggering them again
/// cost a second reconcile, and for a denied role a second AssumeRole call, at every start.
pub fn namespace_triggers(
    cached: Option<&PartialObjectMeta<Namespace>>,
    new: &PartialObjectMeta<Namespace>,
    synced: bool,
) -> bool {
    match cached {
        Some(old) => old.metadata.annotations != new.metadata.annotations,
        None => synced,
    }
}

/// Learns the controller's own identity from STS `GetCallerIdentity` (retrying while STS cannot
/// be asked), adds it to `guard`, and puts the guard in force. Until then nothing is issued.
pub async fn learn_identity(policy: &PolicyContext, sts: &StsIssuer, mut guard: Guard) {
    let mut delay = Duration::from_secs(1);
    loop {
        match sts.caller_arn().await {
            Ok(identity) => {
                if guard.protect_identity(&identity, "the controller's own role") {
                    info!(
                        identity,
                        "the controller's own role is never issued to an AWSIAMRole"
                    );
                } else {
                    info!(identity, "the controller's identity is not a role");
                }
                policy.set_guard(guard);
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in_s = delay.as_secs(), "GetCallerIdentity failed; nothing is issued until the controller knows its own identity");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(annotations: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut ns = PartialObjectMeta::<Namespace>::default();
        ns.metadata.name = Some("team".into());
        ns.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        ns
    }

    #[test]
    fn a_namespace_triggers_its_roles_on_an_annotation_change_or_when_new_after_the_start() {
        let permitted = namespace(&[("iam.amazonaws.com/permitted", ".*")]);
        let narrowed = namespace(&[("iam.amazonaws.com/permitted", "app-.*")]);
        let mut relabelled = permitted.clone();
        relabelled.metadata.labels = Some([("team".into(), "a".into())].into());
        // The initial list: every role is reconciled by its own list.
        assert!(!namespace_triggers(None, &permitted, false));
        // Created after the start (or during an outage): its roles may be waiting for it.
        assert!(namespace_triggers(None, &permitted, true));
        assert!(namespace_triggers(Some(&permitted), &narrowed, true));
        // A relist after a 410 compares against the copy from before it.
        assert!(namespace_triggers(Some(&permitted), &narrowed, false));
        assert!(!namespace_triggers(Some(&permitted), &permitted, true));
        assert!(!namespace_triggers(Some(&permitted), &relabelled, true));
    }
}
