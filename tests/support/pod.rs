//! A Deployment's container run the way the kubelet runs it, without a kubelet: the image's
//! entrypoint (the built binary, or the entrypoint of an extracted image root under `chroot`)
//! with the container's args and env, the ServiceAccount's token and CA at
//! /var/run/secrets/kubernetes.io/serviceaccount and KUBERNETES_SERVICE_HOST/PORT (the
//! in-cluster configuration), Secret volumes at their mount paths, as the user and group of its
//! securityContext, in a private mount namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, ServiceAccount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};

use super::{Binary, Env, spawn_watched};

/// The first container of `d`.
pub fn container(d: &Deployment) -> &Container {
    &d.spec.template.spec.as_ref().expect("pod spec").containers[0]
}

/// The Deployment in a multi-document YAML text (rendered chart, manifest file).
pub fn deployment(yaml: &str) -> Deployment {
    let doc = serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).ok())
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment in the YAML");
    serde_json::from_value(doc).expect("Deployment")
}

/// Where the container's process comes from.
pub enum Entrypoint {
    /// The binary Cargo built (the image's entrypoint is that binary).
    Binary,
    /// An extracted image root and its entrypoint: run under `chroot`, nothing from the host.
    Image {
        root: PathBuf,
        entrypoint: Vec<String>,
    },
}

pub struct Pod<'a> {
    pub env: &'a Env,
    pub client: &'a kube::Client,
    pub namespace: &'a str,
    pub name: &'a str,
    pub deployment: &'a Deployment,
    /// Volume name -> directory holding its files (e.g. a kubelet-style Secret volume).
    pub volumes: BTreeMap<String, PathBuf>,
    pub entrypoint: Entrypoint,
}

impl Pod<'_> {
    pub async fn run(&self) -> Binary {
        let pod = self
            .deployment
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod spec");
        let c = container(self.deployment);
        assert!(
            c.command.is_none(),
            "the container must run the image's entrypoint, not a command"
        );
        let sa = pod
            .service_account_name
            .clone()
            .expect("serviceAccountName");
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), self.namespace);
        let token = sas
            .create_token_request(&sa, &PostParams::default(), &TokenRequest::default())
            .await
            .expect("a token for the Deployment's ServiceAccount")
            .status
            .and_then(|s| s.token)
            .expect("token");
        let sa_dir = self.env.dir.join(format!("sa-{}", self.name));
        std::fs::create_dir_all(&sa_dir).expect("sa dir");
        std::fs::write(sa_dir.join("token"), token).expect("token");
        std::fs::write(sa_dir.join("ca.crt"), &self.env.ca_pem).expect("ca");
        std::fs::write(sa_dir.join("namespace"), self.namespace).expect("ns");
        make_readable(&sa_dir);

        let mut vars: Vec<String> = Vec::new();
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    let field = from
                        .field_ref
                        .as_ref()
                        .map(|f| f.field_path.as_str())
                        .expect("only fieldRef env is emulated");
                    match field {
                        "metadata.name" => self.name.to_string(),
                        "metadata.namespace" => self.namespace.to_string(),
                        other => panic!("fieldRef {other} not emulated"),
                    }
                }
                (None, None) => String::new(),
            };
            vars.push(format!("{}={value}", e.name));
        }
        let api_port = self.env.api_url.rsplit(':').next().expect("port");
        vars.push("KUBERNETES_SERVICE_HOST=127.0.0.1".into());
        vars.push(format!("KUBERNETES_SERVICE_PORT={api_port}"));

        // The root the process sees: the host's (mount points made on a private tmpfs over /run)
        // or the image's (mount points made inside the extracted copy).
        let (root, program) = match &self.entrypoint {
            Entrypoint::Binary => (None, vec![super::binary_path().display().to_string()]),
            Entrypoint::Image { root, entrypoint } => (Some(root.clone()), entrypoint.clone()),
        };
        let prefix = root
            .as_ref()
            .map(|r| r.display().to_string())
            .unwrap_or_default();
        let mut script = String::from("set -e; ");
        if root.is_none() {
            script.push_str("mount -t tmpfs tmpfs /run; ");
        }
        script.push_str(&format!(
            "mkdir -p {prefix}/run/secrets/kubernetes.io/serviceaccount; \
             mount --bind \"$1\" {prefix}/run/secrets/kubernetes.io/serviceaccount; shift; "
        ));
        if let Some(r) = &root {
            // /var/run -> /run as on every distribution.
            let var = r.join("var");
            std::fs::create_dir_all(&var).expect("var");
            let _ = std::os::unix::fs::symlink("../run", var.join("run"));
        }
        let mut mount_args: Vec<String> = vec![sa_dir.display().to_string()];
        for m in c.volume_mounts.iter().flatten() {
            let dir = self
                .volumes
                .get(&m.name)
                .unwrap_or_else(|| panic!("no directory for volume {}", m.name));
            make_readable(dir);
            let target = format!("{prefix}{}", m.mount_path);
            std::fs::create_dir_all(&target).expect("mount point");
            script.push_str(&format!("mount --bind \"$1\" {target}; shift; "));
            mount_args.push(dir.display().to_string());
        }
        let (uid, gid) = run_as(self.deployment);
        match &root {
            None => script.push_str(&format!(
                "exec /usr/bin/setpriv --reuid={uid} --regid={gid} --clear-groups \"$@\""
            )),
            Some(r) => script.push_str(&format!(
                "exec /usr/sbin/chroot --userspec={uid}:{gid} {} \"$@\"",
                r.display()
            )),
        }

        let mut args: Vec<String> = vec!["-i".into()];
        args.extend(vars);
        args.extend(
            [
                "/usr/bin/unshare",
                "--mount",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                &script,
                "pod",
            ]
            .map(String::from),
        );
        args.extend(mount_args);
        args.extend(program);
        args.extend(c.args.clone().unwrap_or_default());
        let log = self.env.dir.join(format!("pod-{}.log", self.name));
        let child = spawn_watched(Path::new("/usr/bin/env"), &args, &log, &[]);
        Binary {
            child,
            admin_port: c
                .ports
                .as_ref()
                .and_then(|p| p.first())
                .map(|p| p.container_port as u16)
                .expect("a container port"),
            log,
        }
    }
}

fn make_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        if e.path().is_file() {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644));
        }
    }
}

/// runAsUser/runAsGroup of the container, else of the pod, else root.
pub fn run_as(d: &Deployment) -> (i64, i64) {
    let pod = d.spec.template.spec.as_ref().expect("pod");
    let c = container(d).security_context.clone().unwrap_or_default();
    let p = pod.security_context.clone().unwrap_or_default();
    (
        c.run_as_user.or(p.run_as_user).unwrap_or(0),
        c.run_as_group.or(p.run_as_group).unwrap_or(0),
    )
}

/// The container port a probe's `port` names.
pub fn named_port(c: &Container, port: &IntOrString) -> u16 {
    match port {
        IntOrString::Int(p) => *p as u16,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u16)
            .unwrap_or_else(|| panic!("no container port named {name}")),
    }
}

/// The container's HTTP probes (liveness, readiness, startup).
pub fn probes(c: &Container) -> Vec<HTTPGetAction> {
    [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
        .map(|p| p.http_get.clone().expect("httpGet probe"))
        .collect()
}

/// Waits until every probe of `c` answers 200 on the port it names.
pub async fn wait_for_probes(c: &Container) {
    for probe in probes(c) {
        let port = named_port(c, &probe.port);
        let path = probe.path.clone().expect("probe path");
        super::wait_for(&format!("probe {path} on port {port}"), || async {
            let r = super::http_get(port, &path).await.ok()?;
            r.starts_with("200").then_some(())
        })
        .await;
    }
}
