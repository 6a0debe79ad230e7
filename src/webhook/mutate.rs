//! The pure part of the webhook: which AWSIAMRole a pod asks for, and the JSON Patch that mounts
//! the role's Secret and sets the SDK environment in every container.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodSpec, SecretVolumeSource, Volume, VolumeMount,
};

/// Pod label naming the AWSIAMRole (in the pod's namespace) whose Secret the pod gets. A label,
/// not an annotation, so that the webhook configuration's `objectSelector` sends only these
/// pods. The empty value opts a pod out of its ServiceAccount's role.
pub const ROLE_LABEL: &str = "zalando.org/aws-iam-role";
/// ServiceAccount annotation naming the AWSIAMRole for all pods that run as it.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "zalando.org/aws-iam-role";
/// Name of the injected volume (the one `deploy/example-app.yaml` uses when wiring by hand).
pub const VOLUME_NAME: &str = "aws-iam-credentials";
/// Where the Secret is mounted; `credentials.process` names this path.
pub const MOUNT_PATH: &str = "/meta/aws-iam";
/// The file every SDK in the support matrix is pointed at.
pub const PROCESS_FILE: &str = "/meta/aws-iam/credentials.process";
/// At most this many warnings per admission (the API server truncates long lists anyway).
pub const MAX_WARNINGS: usize = 8;

/// Variables that win over the injected files in every SDK's credential chain.
const OVERRIDING: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// What to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The AWSIAMRole, and so the Secret, name.
    pub role: String,
    /// Region for `AWS_REGION` and `AWS_DEFAULT_REGION` (`--webhook-region`), if any.
    pub region: Option<String>,
}

/// The environment the webhook sets: exactly what `tests/sdk.rs` proves for the
/// `credential_process` column of every SDK (docs/sdk-configuration.md), plus the region.
pub fn environment(region: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_CONFIG_FILE", PROCESS_FILE.to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", PROCESS_FILE.to_string()),
        ("AWS_CREDENTIAL_PROFILES_FILE", PROCESS_FILE.to_string()),
        ("AWS_SDK_LOAD_CONFIG", "1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    if let Some(r) = region {
        env.push(("AWS_REGION", r.to_string()));
        env.push(("AWS_DEFAULT_REGION", r.to_string()));
    }
    env
}

/// Where the pod's role came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The pod's own label names the role.
    Pod(String),
    /// The pod's ServiceAccount's annotation names it.
    ServiceAccount(String),
    /// The pod opted out (empty label) or nobody named a role.
    None,
}

impl Choice {
    pub fn role(&self) -> Option<&str> {
        match self {
            Choice::Pod(r) | Choice::ServiceAccount(r) => Some(r),
            Choice::None => None,
        }
    }
}

/// The pod's own choice: `Some("")` is an explicit opt-out.
pub fn pod_role(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROLE_LABEL))
        .map(String::as_str)
}

/// A role the pod names wins over its ServiceAccount's; an empty label opts out of both.
pub fn choose(pod: Option<&str>, service_account: Option<&str>) -> Choice {
    match (pod, service_account) {
        (Some(""), _) => Choice::None,
        (Some(p), _) => Choice::Pod(p.to_string()),
        (None, Some(s)) if !s.trim().is_empty() => Choice::ServiceAccount(s.trim().to_string()),
        _ => Choice::None,
    }
}

/// Why a named role cannot be injected at all (the pod is refused with this message).
pub fn invalid_role_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    (!ok).then(|| {
        format!(
            "AWSIAMRole name {:?} is not a valid Secret name (lowercase DNS subdomain)",
            truncate(name, 64)
        )
    })
}

/// The result of `mutate`: the patch (empty when the pod already has everything) and the
/// conflicts found, for admission warnings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    pub patch: json_patch::Patch,
    pub warnings: Vec<String>,
}

impl Mutation {
    pub fn is_empty(&self) -> bool {
        self.patch.0.is_empty()
    }
}

/// Adds the Secret volume, a read-only mount at `/meta/aws-iam` and the SDK environment to
/// every container and init container. Idempotent: what is already there is not added again,
/// and a user's conflicting value is kept and reported.
pub fn mutate(pod: &Pod, injection: &Injection) -> Mutation {
    let mut warnings = Vec::new();
    // The spec alone: the metadata, with its managedFields, is often as large and never changes.
    let mut out = pod.spec.clone().unwrap_or_default();
    let spec = &mut out;
    let had_volumes = spec.volumes.is_some();
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let by_secret = volumes.iter().find(|v| {
        v.secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            .is_some_and(|s| s == injection.role)
    });
    let volume = match by_secret {
        Some(v) => Some(v.name.clone()),
        None if volumes.iter().any(|v| v.name == VOLUME_NAME) => {
            warnings.push(format!(
                "volume {VOLUME_NAME} exists and is not the Secret {}: kept, so the credentials are not mounted",
                injection.role
            ));
            None
        }
        None => {
            volumes.push(Volume {
                name: VOLUME_NAME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(injection.role.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            Some(VOLUME_NAME.to_string())
        }
    };
    if volumes.is_empty() && !had_volumes {
        spec.volumes = None;
    }
    let env = environment(injection.region.as_deref());
    let inits = spec.init_containers.iter_mut().flatten();
    for c in inits.chain(spec.containers.iter_mut()) {
        inject(c, volume.as_deref(), &env, &mut warnings);
    }
    Mutation {
        patch: spec_patch(pod, &out),
        warnings: bounded(warnings),
    }
}

/// The JSON patch that turns `pod` into the same pod with the spec `after`, for an `after` that
/// differs from the pod's spec only by items appended to its lists (volumes, and each
/// container's variables and mounts), which is all either mode changes: one `add` per new item,
/// or one `add` of the whole list where the pod had none. Built from the additions alone, in the
/// order a diff gives (keys sorted); serializing both specs and diffing them took 11 ms of the
/// 15 ms a 50-container pod's admission spent in the webhook (`scripts/bench-admission.sh`).
/// `appended_lists_patch_as_a_diff_would` checks it against `json_patch::diff`.
pub(crate) fn spec_patch(pod: &Pod, after: &PodSpec) -> json_patch::Patch {
    let mut ops = Ops::default();
    let Some(before) = &pod.spec else {
        // No spec (the API server never sends such a pod): the whole spec.
        ops.add("/spec".into(), after);
        return json_patch::Patch(ops.0);
    };
    ops.containers(
        "/spec/containers",
        Some(&before.containers),
        Some(&after.containers),
    );
    ops.containers(
        "/spec/initContainers",
        before.init_containers.as_ref(),
        after.init_containers.as_ref(),
    );
    ops.list(
        "/spec/volumes",
        before.volumes.as_ref(),
        after.volumes.as_ref(),
    );
    json_patch::Patch(ops.0)
}

/// The operations of [`spec_patch`] as they are found.
#[derive(Default)]
struct Ops(Vec<json_patch::PatchOperation>);

impl Ops {
    fn add(&mut self, path: String, value: &impl serde::Serialize) {
        self.0
            .push(json_patch::PatchOperation::Add(json_patch::AddOperation {
                path: json_patch::jsonptr::PointerBuf::from_tokens(path.split('/').skip(1)),
                value: serde_json::to_value(value).unwrap_or_default(),
            }));
    }

    /// The items of `after` past the end of `before`, or all of `after` where there was no list.
    fn list<T: serde::Serialize>(
        &mut self,
        path: &str,
        before: Option<&Vec<T>>,
        after: Option<&Vec<T>>,
    ) {
        match (before, after) {
            (None, Some(after)) => self.add(path.to_string(), after),
            (Some(before), Some(after)) => {
                for (i, item) in after.iter().enumerate().skip(before.len()) {
                    self.add(format!("{path}/{i}"), item);
                }
            }
            (_, None) => {}
        }
    }

    /// Each container's new variables and mounts; a container that is new as a whole.
    fn containers(
        &mut self,
        path: &str,
        before: Option<&Vec<Container>>,
        after: Option<&Vec<Container>>,
    ) {
        let (Some(before), Some(after)) = (before, after) else {
            return self.list(path, before, after);
        };
        for (i, c) in after.iter().enumerate() {
            match before.get(i) {
                Some(b) => {
                    self.list(&format!("{path}/{i}/env"), b.env.as_ref(), c.env.as_ref());
                    self.list(
                        &format!("{path}/{i}/volumeMounts"),
                        b.volume_mounts.as_ref(),
                        c.volume_mounts.as_ref(),
                    );
                }
                None => self.add(format!("{path}/{i}"), c),
            }
        }
    }
}

fn inject(
    c: &mut Container,
    volume: Option<&str>,
    env: &[(&'static str, String)],
    warnings: &mut Vec<String>,
) {
    let (had_mounts, had_env) = (c.volume_mounts.is_some(), c.env.is_some());
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    match mounts.iter().find(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH) {
        Some(m) if Some(m.name.as_str()) != volume => warnings.push(format!(
            "container {} mounts volume {} at {MOUNT_PATH}: kept",
            c.name, m.name
        )),
        Some(m) if m.sub_path.as_deref().is_some_and(|s| !s.is_empty()) => warnings.push(format!(
            "container {} mounts {MOUNT_PATH} with subPath: such a mount never sees renewed credentials",
            c.name
        )),
        Some(_) => {}
        None => {
            if let Some(volume) = volume {
                mounts.push(VolumeMount {
                    name: volume.to_string(),
                    mount_path: MOUNT_PATH.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
        }
    }
    if mounts.is_empty() && !had_mounts {
        c.volume_mounts = None;
    }
    let vars = c.env.get_or_insert_with(Vec::new);
    set_env(vars, &c.name, env, warnings);
    for name in OVERRIDING {
        if vars.iter().any(|v| v.name == name) {
            warnings.push(format!(
                "container {} sets {name}, which SDKs prefer over the role's credentials",
                c.name
            ));
        }
    }
    if vars.is_empty() && !had_env {
        c.env = None;
    }
}

pub(crate) fn bounded(mut warnings: Vec<String>) -> Vec<String> {
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - (MAX_WARNINGS - 1);
        warnings.truncate(MAX_WARNINGS - 1);
        warnings.push(format!("... and {more} more"));
    }
    warnings
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Adds each of `env` to a container's variables (`container` names it in warnings); a variable
/// the container already sets to another value is kept, with a warning. Shared by both modes.
pub(crate) fn set_env(
    vars: &mut Vec<EnvVar>,
    container: &str,
    env: &[(&'static str, String)],
    warnings: &mut Vec<String>,
) {
    for (name, value) in env {
        match vars.iter().find(|v| v.name == *name) {
            Some(v) if v.value.as_deref() == Some(value.as_str()) && v.value_from.is_none() => {}
            Some(_) => warnings.push(format!(
                "container {container} sets {name} to another value: kept, the SDK may not use the role's credentials"
            )),
            None => vars.push(EnvVar {
                name: (*name).into(),
                value: Some(value.clone()),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::{Value, json};

    /// One row of tests/golden/webhook/cases.yaml, the table the MutatingAdmissionPolicy
    /// must satisfy too.
    #[derive(Deserialize)]
    struct Case {
        name: String,
        role: String,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        warnings: Vec<String>,
        pod: Value,
        want: Value,
    }

    fn cases() -> Vec<Case> {
        serde_yaml::from_str(include_str!("../../tests/golden/webhook/cases.yaml")).expect("table")
    }

    fn injection(role: &str, region: Option<&str>) -> Injection {
        Injection {
            role: role.into(),
            region: region.map(str::to_string),
        }
    }

    fn apply(pod: &Value, patch: &json_patch::Patch) -> Value {
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, patch).expect("patch applies");
        doc
    }

    #[test]
    fn every_case_of_the_table_is_patched_to_its_expected_pod() {
        let cases = cases();
        assert!(cases.len() >= 6);
        for c in cases {
            let pod: Pod = serde_json::from_value(c.pod.clone()).expect("pod");
            let m = mutate(&pod, &injection(&c.role, c.region.as_deref()));
            assert_eq!(apply(&c.pod, &m.patch), c.want, "{}", c.name);
            for w in &c.warnings {
                assert!(
                    m.warnings.iter().any(|got| got.contains(w.as_str())),
                    "{}: no warning {w:?} in {:?}",
                    c.name,
                    m.warnings
                );
            }
            if c.warnings.is_empty() {
                assert!(m.warnings.is_empty(), "{}: {:?}", c.name, m.warnings);
            }
        }
    }

    #[test]
    fn a_second_admission_of_a_mutated_pod_changes_nothing() {
        for c in cases() {
            let pod: Pod = serde_json::from_value(c.pod.clone()).expect("pod");
            let inj = injection(&c.role, c.region.as_deref());
            let once: Pod =
                serde_json::from_value(apply(&c.pod, &mutate(&pod, &inj).patch)).expect("pod");
            let twice = mutate(&once, &inj);
            assert!(twice.is_empty(), "{}: {:?}", c.name, twice.patch);
        }
    }

    #[test]
    fn a_bare_pod_gets_exactly_these_patch_operations() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .expect("pod");
        let m = mutate(&pod, &injection("app", None));
        let ops = serde_json::to_value(&m.patch).expect("json");
        let env: Vec<Value> = environment(None)
            .into_iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/spec/containers/0/env", "value": env},
                {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [
                    {"name": "aws-iam-credentials", "mountPath": "/meta/aws-iam", "readOnly": true}
                ]},
                {"op": "add", "path": "/spec/volumes", "value": [
                    {"name": "aws-iam-credentials", "secret": {"secretName": "app"}}
                ]}
            ])
        );
    }

    /// A container's variables and more of them, and its mounts and more of them.
    type Lists = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );

    /// A spec, and the same spec with items appended to its lists (what both modes do).
    fn appended() -> impl proptest::strategy::Strategy<Value = (PodSpec, PodSpec)> {
        use proptest::prelude::*;
        let list = || prop::option::of(prop::collection::vec(0..4u8, 0..3));
        let container = (list(), list(), list(), list());
        (
            prop::collection::vec(container.clone(), 1..4),
            prop::option::of(prop::collection::vec(container, 0..3)),
            list(),
            list(),
        )
            .prop_map(|(cs, inits, volumes, more_volumes)| {
                let env = |n: &[u8]| -> Vec<EnvVar> {
                    n.iter()
                        .map(|i| EnvVar {
                            name: format!("V{i}"),
                            value: Some(format!("{i}")),
                            ..Default::default()
                        })
                        .collect()
                };
                let mounts = |n: &[u8]| -> Vec<VolumeMount> {
                    n.iter()
                        .map(|i| VolumeMount {
                            name: format!("m{i}"),
                            mount_path: format!("/m/{i}"),
                            ..Default::default()
                        })
                        .collect()
                };
                let vols = |n: &[u8]| -> Vec<Volume> {
                    n.iter()
                        .map(|i| Volume {
                            name: format!("v{i}"),
                            ..Default::default()
                        })
                        .collect()
                };
                let grow = |before: &Option<Vec<u8>>, more: &Option<Vec<u8>>| match (before, more) {
                    (b, None) => (b.clone(), b.clone()),
                    (None, Some(m)) => (None, Some(m.clone())),
                    (Some(b), Some(m)) => (Some(b.clone()), Some([b.clone(), m.clone()].concat())),
                };
                let pair = |cs: &[Lists]| {
                    let (mut b, mut a) = (Vec::new(), Vec::new());
                    for (i, (e, more_e, m, more_m)) in cs.iter().enumerate() {
                        let (eb, ea) = grow(e, more_e);
                        let (mb, ma) = grow(m, more_m);
                        let c = |e: Option<Vec<u8>>, m: Option<Vec<u8>>| Container {
                            name: format!("c{i}"),
                            env: e.as_deref().map(env),
                            volume_mounts: m.as_deref().map(mounts),
                            ..Default::default()
                        };
                        b.push(c(eb, mb));
                        a.push(c(ea, ma));
                    }
                    (b, a)
                };
                let (cb, ca) = pair(&cs);
                let (ib, ia) = match &inits {
                    Some(i) => {
                        let (b, a) = pair(i);
                        (Some(b), Some(a))
                    }
                    None => (None, None),
                };
                let (vb, va) = grow(&volumes, &more_volumes);
                (
                    PodSpec {
                        containers: cb,
                        init_containers: ib,
                        volumes: vb.as_deref().map(vols),
                        ..Default::default()
                    },
                    PodSpec {
                        containers: ca,
                        init_containers: ia,
                        volumes: va.as_deref().map(vols),
                        ..Default::default()
                    },
                )
            })
    }

    proptest::proptest! {
        #[test]
        fn appended_lists_patch_as_a_diff_would((before, after) in appended()) {
            let pod = Pod { spec: Some(before), ..Default::default() };
            let patch = spec_patch(&pod, &after);
            let want = json_patch::diff(
                &json!({ "spec": serde_json::to_value(&pod.spec).expect("json") }),
                &json!({ "spec": serde_json::to_value(&after).expect("json") }),
            );
            proptest::prop_assert_eq!(&patch, &want);
            let mut doc = serde_json::to_value(&pod).expect("json");
            json_patch::patch(&mut doc, &patch).expect("patch applies");
            proptest::prop_assert_eq!(&doc["spec"], &serde_json::to_value(&after).expect("json"));
        }
    }

    #[test]
    fn fields_unknown_to_the_typed_pod_are_never_removed() {
        // A field k8s-openapi does not know is dropped by the typed round trip on both sides
        // of the diff, so the patch leaves it alone.
        let raw = json!({
            "metadata": {"name": "p"},
            "spec": {"futureField": 1, "containers": [{"name": "c", "image": "i", "futureToo": true}]}
        });
        let pod: Pod = serde_json::from_value(raw.clone()).expect("pod");
        let m = mutate(&pod, &injection("app", None));
        let out = apply(&raw, &m.patch);
        assert_eq!(out["spec"]["futureField"], 1);
        assert_eq!(out["spec"]["containers"][0]["futureToo"], true);
    }

    #[test]
    fn the_pods_own_role_wins_and_an_empty_label_opts_out() {
        assert_eq!(choose(Some("a"), Some("b")), Choice::Pod("a".into()));
        assert_eq!(choose(None, Some("b")), Choice::ServiceAccount("b".into()));
        assert_eq!(choose(Some(""), Some("b")), Choice::None);
        assert_eq!(choose(None, Some("  ")), Choice::None);
        assert_eq!(choose(None, None), Choice::None);
    }

    #[test]
    fn role_names_must_be_secret_names() {
        assert!(invalid_role_name("my-app.role").is_none());
        for bad in ["", "My", "a_b", "-a", "a..b", &"x".repeat(254)] {
            assert!(invalid_role_name(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn warnings_are_bounded() {
        let containers: Vec<Value> = (0..20)
            .map(|i| json!({"name": format!("c{i}"), "image": "i", "env": [{"name": "AWS_PROFILE", "value": "x"}]}))
            .collect();
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": containers}})).expect("pod");
        let m = mutate(&pod, &injection("app", None));
        assert_eq!(m.warnings.len(), MAX_WARNINGS);
        assert!(m.warnings[MAX_WARNINGS - 1].contains("more"));
    }
}
