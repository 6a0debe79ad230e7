//! The webhook's endpoint mode (pure): instead of mounting the Secret into every container, a
//! native sidecar running `serve-credentials` mounts it and serves the container credentials
//! protocol on 127.0.0.1; the app containers get the endpoint's URL and the pod's token file.
//! For images without a shell (`credentials.process` needs `sh` and `cat`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, ExecAction, Pod, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::mutate::{self, Injection, Mutation};
use crate::serve;

/// Pod annotation choosing how the pod gets its credentials: `process` (the Secret mounted
/// into every container, `credentials.process`) or `endpoint` (the sidecar). Without it, the
/// webhook's `--webhook-credentials` decides.
pub const MODE_ANNOTATION: &str = "zalando.org/aws-iam-credentials";
/// Name of the injected sidecar (an init container with `restartPolicy: Always`).
pub const SIDECAR_NAME: &str = "aws-iam-credentials";
/// The in-memory volume holding the pod's token.
pub const TOKEN_VOLUME: &str = "aws-iam-token";
/// Where the token volume is mounted, in the sidecar (read-write) and the app containers.
pub const TOKEN_DIR: &str = "/meta/aws-iam-token";
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
pub const TOKEN_FILE: &str = "/meta/aws-iam-token/token";
/// The binary in the controller's image (its entrypoint), which the startup probe execs.
pub const BINARY: &str = "/kube-aws-iam-controller";
/// The image's user: the sidecar runs as it whatever the pod's own `runAsUser`.
pub const SIDECAR_USER: i64 = 65532;

/// How a pod gets its credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The Secret mounted into every container, SDKs pointed at `credentials.process`.
    #[default]
    Process,
    /// A sidecar serving the container credentials protocol.
    Endpoint,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Process => "process",
            Mode::Endpoint => "endpoint",
        }
    }
}

/// The webhook's delivery settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// For pods without the annotation.
    pub default: Mode,
    /// The controller's own image, which the sidecar runs; endpoint mode needs it.
    pub image: Option<String>,
}

impl Delivery {
    /// The pod's mode: its annotation, else the default. An unknown value is an error message.
    pub fn mode_for(&self, pod: &Pod) -> Result<Mode, String> {
        let value = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MODE_ANNOTATION));
        match value.map(|v| v.trim()) {
            None => Ok(self.default),
            Some("process") => Ok(Mode::Process),
            Some("endpoint") => Ok(Mode::Endpoint),
            Some(other) => Err(format!(
                "annotation {MODE_ANNOTATION}: {:?} is neither process nor endpoint",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
pub fn full_uri() -> String {
    format!(
        "http://127.0.0.1:{}{}",
        serve::DEFAULT_PORT,
        serve::CREDENTIALS_PATH
    )
}

/// The environment of the app containers in endpoint mode: exactly what `tests/sdk.rs`
/// proves for the endpoint column of every SDK (docs/sdk-configuration.md), plus the region.
pub fn environment(region: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            TOKEN_FILE.to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    if let Some(r) = region {
        env.push(("AWS_REGION", r.to_string()));
        env.push(("AWS_DEFAULT_REGION", r.to_string()));
    }
    env
}

/// Variables that win over the container endpoint in the SDKs' credential chains.
const OVERRIDING: [&str; 7] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// The sidecar: the controller's image running `serve-credentials` on the Secret's volume,
/// non-root on a read-only root filesystem without capabilities; its startup probe holds the
/// app containers back until it serves valid credentials.
pub fn sidecar(image: &str, secret_volume: &str) -> Container {
    let listen = format!("--listen=127.0.0.1:{}", serve::DEFAULT_PORT);
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(image.to_string()),
        args: Some(vec![
            "serve-credentials".into(),
            format!("--dir={}", mutate::MOUNT_PATH),
            listen.clone(),
            format!("--token-file={TOKEN_FILE}"),
        ]),
        restart_policy: Some("Always".into()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: secret_volume.to_string(),
                mount_path: mutate::MOUNT_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                ..Default::default()
            },
        ]),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    BINARY.into(),
                    "serve-credentials".into(),
                    "--probe".into(),
                    listen,
                ]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(3),
            failure_threshold: Some(120),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("5m")),
                ("memory".to_string(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), quantity("32Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_USER),
            run_as_group: Some(SIDECAR_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Endpoint mode: the Secret volume and an in-memory token volume, the sidecar as the first
/// init container (so later init containers get credentials too), and in every other container
/// the endpoint's environment and the token volume, read-only. The app containers do not mount
/// the Secret. Idempotent like [`mutate::mutate`]; a pod whose volume names are taken by other
/// volumes is left unchanged, with a warning.
pub fn mutate(pod: &Pod, injection: &Injection, image: &str) -> Mutation {
    let mut warnings = Vec::new();
    let mut out = pod.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    let secret_volume = match add_volumes(spec.volumes.get_or_insert_with(Vec::new), injection) {
        Ok(name) => name,
        Err(refusal) => return refused(refusal),
    };
    if spec.host_network == Some(true) {
        warnings.push(format!(
            "hostNetwork pod: 127.0.0.1:{} is the node's loopback, shared with every hostNetwork pod on the node; only one of them can serve there",
            serve::DEFAULT_PORT
        ));
    }
    let has_sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == SIDECAR_NAME);
    let env = environment(injection.region.as_deref());
    let inits = spec.init_containers.iter_mut().flatten();
    for c in inits
        .chain(spec.containers.iter_mut())
        .filter(|c| c.name != SIDECAR_NAME)
    {
        inject(c, &env, &mut warnings);
    }
    let mut patch = mutate::spec_patch(pod, out.spec.as_ref().unwrap_or(&Default::default()));
    if !has_sidecar {
        patch.0.push(add_sidecar(pod, image, &secret_volume));
    }
    Mutation {
        patch,
        warnings: mutate::bounded(warnings),
    }
}

/// Adds the Secret volume (unless one already mounts the role's Secret) and the token volume;
/// returns the Secret volume's name, or why the pod is left unchanged (a volume name taken).
fn add_volumes(volumes: &mut Vec<Volume>, injection: &Injection) -> Result<String, String> {
    let by_secret = volumes.iter().find(|v| {
        v.secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            .is_some_and(|s| s == injection.role)
    });
    let secret_volume = match by_secret {
        Some(v) => v.name.clone(),
        None if volumes.iter().any(|v| v.name == mutate::VOLUME_NAME) => {
            return Err(format!(
                "volume {} exists and is not the Secret {}: the credentials sidecar is not injected",
                mutate::VOLUME_NAME,
                injection.role
            ));
        }
        None => {
            volumes.push(Volume {
                name: mutate::VOLUME_NAME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(injection.role.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mutate::VOLUME_NAME.to_string()
        }
    };
    match volumes.iter().find(|v| v.name == TOKEN_VOLUME) {
        Some(v) if v.empty_dir.is_none() => {
            return Err(format!(
                "volume {TOKEN_VOLUME} exists and is not an emptyDir: the credentials sidecar is not injected"
            ));
        }
        Some(_) => {}
        None => volumes.push(Volume {
            name: TOKEN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(quantity("1Mi")),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    Ok(secret_volume)
}

/// The operation that adds the sidecar as the first init container of `pod` (as it came).
/// Added after the diff, to index 0: the diff's paths name the init containers as they were.
fn add_sidecar(pod: &Pod, image: &str, secret_volume: &str) -> json_patch::PatchOperation {
    let sidecar = serde_json::to_value(sidecar(image, secret_volume)).unwrap_or_default();
    let had_inits = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.init_containers.is_some());
    let (path, value) = if had_inits {
        ("/spec/initContainers/0", sidecar)
    } else {
        (
            "/spec/initContainers",
            serde_json::Value::Array(vec![sidecar]),
        )
    };
    json_patch::PatchOperation::Add(json_patch::AddOperation {
        path: json_patch::jsonptr::PointerBuf::parse(path).unwrap_or_default(),
        value,
    })
}

fn refused(warning: String) -> Mutation {
    Mutation {
        patch: json_patch::Patch(Vec::new()),
        warnings: vec![warning],
    }
}

fn inject(c: &mut Container, env: &[(&'static str, String)], warnings: &mut Vec<String>) {
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    match mounts
        .iter()
        .find(|m| m.mount_path.trim_end_matches('/') == TOKEN_DIR)
    {
        Some(m) if m.name != TOKEN_VOLUME => warnings.push(format!(
            "container {} mounts volume {} at {TOKEN_DIR}: kept, so it cannot read the pod's token",
            c.name, m.name
        )),
        Some(_) => {}
        None => mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }),
    }
    let vars = c.env.get_or_insert_with(Vec::new);
    mutate::set_env(vars, &c.name, env, warnings);
    for name in OVERRIDING {
        if vars.iter().any(|v| v.name == name) {
            warnings.push(format!(
                "container {} sets {name}, which SDKs prefer over the credentials endpoint",
                c.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const IMAGE: &str = "registry.example/kube-aws-iam-controller:v1";

    fn injection(role: &str) -> Injection {
        Injection {
            role: role.into(),
            region: None,
        }
    }

    fn apply(pod: &Value, patch: &json_patch::Patch) -> Value {
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, patch).expect("patch applies");
        doc
    }

    fn pods() -> Vec<Value> {
        vec![
            json!({"metadata": {"name": "bare"},
                   "spec": {"containers": [{"name": "app", "image": "distroless"}]}}),
            json!({"metadata": {"name": "inits"},
                   "spec": {"initContainers": [{"name": "migrate", "image": "m", "futureField": 1}],
                            "containers": [{"name": "app", "image": "a"}, {"name": "b", "image": "b", "env": [{"name": "X", "value": "1"}]}]}}),
            json!({"metadata": {"name": "empty-inits"},
                   "spec": {"initContainers": [], "volumes": [{"name": "data", "emptyDir": {}}],
                            "containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}),
            json!({"metadata": {"name": "own-secret-volume"},
                   "spec": {"volumes": [{"name": "creds", "secret": {"secretName": "app"}}],
                            "containers": [{"name": "app", "image": "a"}]}}),
        ]
    }

    #[test]
    fn the_sidecar_comes_first_and_every_other_container_gets_the_endpoint_not_the_secret() {
        for raw in pods() {
            let pod: Pod = serde_json::from_value(raw.clone()).expect("pod");
            let m = mutate(&pod, &injection("app"), IMAGE);
            assert!(m.warnings.is_empty(), "{:?}", m.warnings);
            let out = apply(&raw, &m.patch);
            let name = &raw["metadata"]["name"];
            let inits = out["spec"]["initContainers"].as_array().expect("inits");
            assert_eq!(inits[0]["name"], SIDECAR_NAME, "{name}");
            assert_eq!(inits[0]["restartPolicy"], "Always");
            assert_eq!(inits[0]["image"], IMAGE);
            assert_eq!(inits[0]["args"][0], "serve-credentials");
            assert_eq!(inits[0]["securityContext"]["runAsNonRoot"], true);
            assert_eq!(inits[0]["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(
                inits[0]["securityContext"]["capabilities"]["drop"],
                json!(["ALL"])
            );
            assert_eq!(
                inits[0]["startupProbe"]["exec"]["command"],
                json!([
                    BINARY,
                    "serve-credentials",
                    "--probe",
                    "--listen=127.0.0.1:61112"
                ])
            );
            let secret_volume = out["spec"]["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["secret"]["secretName"] == "app")
                .expect("the Secret's volume")["name"]
                .clone();
            assert_eq!(
                inits[0]["volumeMounts"][0],
                json!({"name": secret_volume, "mountPath": "/meta/aws-iam", "readOnly": true}),
                "{name}"
            );
            let token = out["spec"]["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == TOKEN_VOLUME)
                .expect("token volume");
            assert_eq!(token["emptyDir"]["medium"], "Memory");
            let others = inits[1..]
                .iter()
                .chain(out["spec"]["containers"].as_array().expect("containers"));
            for c in others {
                let env: Vec<(String, String)> = c["env"]
                    .as_array()
                    .expect("env")
                    .iter()
                    .map(|v| {
                        (
                            v["name"].as_str().unwrap_or_default().to_string(),
                            v["value"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                for (k, v) in environment(None) {
                    assert!(
                        env.contains(&(k.to_string(), v)),
                        "{name}/{}: {env:?}",
                        c["name"]
                    );
                }
                let mounts = c["volumeMounts"].as_array().expect("mounts");
                assert!(mounts.contains(
                    &json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true})
                ));
                assert!(
                    !mounts.iter().any(|m| m["name"] == secret_volume),
                    "{name}/{}: mounts the Secret",
                    c["name"]
                );
            }
            if name == "inits" {
                assert_eq!(inits[1]["futureField"], 1, "unknown fields are kept");
            }
        }
    }

    #[test]
    fn a_second_admission_of_an_endpoint_pod_changes_nothing() {
        for raw in pods() {
            let pod: Pod = serde_json::from_value(raw.clone()).expect("pod");
            let once = apply(&raw, &mutate(&pod, &injection("app"), IMAGE).patch);
            let once_pod: Pod = serde_json::from_value(once).expect("pod");
            let twice = mutate(&once_pod, &injection("app"), IMAGE);
            assert!(
                twice.is_empty(),
                "{}: {:?}",
                raw["metadata"]["name"],
                twice.patch
            );
            assert!(twice.warnings.is_empty(), "{:?}", twice.warnings);
        }
    }

    #[test]
    fn taken_volume_names_leave_the_pod_unchanged_with_a_warning() {
        for volumes in [
            json!([{"name": "aws-iam-credentials", "secret": {"secretName": "other"}}]),
            json!([{"name": "aws-iam-token", "configMap": {"name": "x"}}]),
        ] {
            let pod: Pod = serde_json::from_value(json!({"spec": {"volumes": volumes,
                "containers": [{"name": "app", "image": "a"}]}}))
            .expect("pod");
            let m = mutate(&pod, &injection("app"), IMAGE);
            assert!(m.is_empty());
            assert!(m.warnings[0].contains("not injected"), "{:?}", m.warnings);
        }
    }

    #[test]
    fn conflicting_variables_and_host_network_are_warned_about() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"hostNetwork": true,
            "containers": [{"name": "app", "image": "a", "env": [
                {"name": "AWS_ACCESS_KEY_ID", "value": "x"},
                {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"}]}]}}))
        .expect("pod");
        let m = mutate(&pod, &injection("app"), IMAGE);
        let all = m.warnings.join("\n");
        assert!(all.contains("hostNetwork"), "{all}");
        assert!(all.contains("sets AWS_ACCESS_KEY_ID"), "{all}");
        assert!(
            all.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI to another value"),
            "{all}"
        );
    }

    #[test]
    fn the_annotation_chooses_the_mode_and_the_flag_decides_without_it() {
        let pod = |a: Option<&str>| -> Pod {
            let mut p = Pod::default();
            if let Some(a) = a {
                p.metadata.annotations =
                    Some([(MODE_ANNOTATION.to_string(), a.to_string())].into());
            }
            p
        };
        let process = Delivery::default();
        let endpoint = Delivery {
            default: Mode::Endpoint,
            image: Some(IMAGE.into()),
        };
        assert_eq!(process.mode_for(&pod(None)), Ok(Mode::Process));
        assert_eq!(endpoint.mode_for(&pod(None)), Ok(Mode::Endpoint));
        assert_eq!(process.mode_for(&pod(Some("endpoint"))), Ok(Mode::Endpoint));
        assert_eq!(endpoint.mode_for(&pod(Some("process"))), Ok(Mode::Process));
        assert!(process.mode_for(&pod(Some("sidecar"))).is_err());
    }
}
