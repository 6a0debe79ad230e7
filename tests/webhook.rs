//! The admission webhook and the MutatingAdmissionPolicy against the real kube-apiserver, which
//! calls the webhook over TLS at https://127.0.0.1:PORT/mutate with the caBundle the webhook's
//! leader publishes. Pods stay Pending (no kubelet), which is enough to see the admitted spec.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use kube_aws_iam_controller::webhook::certs::Lifetimes;
use kube_aws_iam_controller::webhook::mutate::{self, ROLE_LABEL};
use kube_aws_iam_controller::webhook::{self, Handle, Settings, TlsSource};
use support::{wait_for, wait_for_within};

fn lifetimes() -> Lifetimes {
    Lifetimes {
        ca: Duration::from_secs(365 * 24 * 3600),
        serving: Duration::from_secs(30 * 24 * 3600),
        overlap: Duration::from_secs(2),
    }
}

fn settings(ns: &str, lifetimes: Lifetimes) -> Settings {
    Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        namespace: ns.to_string(),
        secret: "webhook-tls".into(),
        configuration: format!("kaic-{ns}"),
        sans: vec!["127.0.0.1".into()],
        tls: TlsSource::SelfManaged(lifetimes),
        region: None,
        delivery: Default::default(),
        watch_namespace: None,
        check_interval: Duration::from_millis(300),
    }
}

async fn start(client: &Client, s: Settings, leader: bool) -> Handle {
    webhook::start(
        client.clone(),
        s,
        Arc::new(kube_aws_iam_controller::metrics::Metrics::new()),
        Arc::new(move || leader),
        None,
        None,
    )
    .await
    .expect("webhook starts")
}

/// The shipped MutatingWebhookConfiguration, pointed at `port` on 127.0.0.1 and confined to
/// `namespaces` (the shipped selectors stay in force), under the test's own name.
fn configuration(name: &str, port: u16, namespaces: &[&str], extra_copy: bool) -> Value {
    let text = std::fs::read_to_string(support::repo().join("deploy/webhook.yaml")).expect("yaml");
    let mut mwc = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| <Value as serde::Deserialize>::deserialize(d).ok())
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("MutatingWebhookConfiguration in deploy/webhook.yaml");
    mwc["metadata"] = json!({"name": name});
    let hooks = mwc["webhooks"].as_array_mut().expect("webhooks");
    if extra_copy {
        // A second webhook on the same pods: the pod passes the webhook twice (and, with
        // reinvocationPolicy IfNeeded, a third time).
        let mut again = hooks[0].clone();
        again["name"] = json!("again.aws-iam.zalando.org");
        hooks.push(again);
    }
    for h in hooks.iter_mut() {
        h["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}/mutate")});
        let sel = h["namespaceSelector"].as_object_mut().map(|o| o.clone());
        let mut sel = sel.unwrap_or_default();
        sel.insert(
            "matchExpressions".into(),
            json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]),
        );
        h["namespaceSelector"] = Value::Object(sel);
    }
    mwc
}

async fn install(client: &Client, mwc: &Value) {
    support::install_webhook_configuration(client, mwc, "kaic-tests").await;
}

fn labelled_pod(name: &str, role: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {ROLE_LABEL: role}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    }))
    .expect("pod")
}

fn env_of(pod: &Pod) -> Vec<(String, String)> {
    pod.spec.as_ref().expect("spec").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn is_injected(pod: &Pod) -> bool {
    env_of(pod)
        .iter()
        .any(|(k, _)| k == "AWS_EC2_METADATA_DISABLED")
}

/// Waits until the API server calls the webhook (a dry-run pod comes back mutated).
async fn wait_until_serving(client: &Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("the API server to call the webhook", || {
        let pods = pods.clone();
        async move {
            let probe = labelled_pod(&format!("probe-{}", support::rand_suffix()), "probe");
            let pp = PostParams {
                dry_run: true,
                ..Default::default()
            };
            pods.create(&pp, &probe).await.ok().filter(is_injected)
        }
    })
    .await;
}

/// Everything the injection touches, in a form that ignores the API server's defaults.
fn projection(pod: &Value) -> Value {
    let containers = |key: &str| -> Value {
        pod["spec"][key]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        json!({
                            "name": c["name"],
                            "env": c["env"].as_array().cloned().unwrap_or_default().iter()
                                .map(|e| json!([e["name"], e["value"]])).collect::<Vec<_>>(),
                            "mounts": c["volumeMounts"].as_array().cloned().unwrap_or_default().iter()
                                .map(|m| json!([m["name"], m["mountPath"], m["readOnly"].as_bool().unwrap_or(false)]))
                                .collect::<Vec<_>>(),
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .map(Value::from)
            .unwrap_or(json!([]))
    };
    let volumes: Vec<Value> = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| json!([v["name"], v["secret"]["secretName"]]))
        .collect();
    json!({"containers": containers("containers"), "init": containers("initContainers"), "volumes": volumes})
}

#[tokio::test]
async fn a_deployments_pod_template_gets_the_documented_wiring_and_every_sdk_gets_the_role() {
    let s = support::scene("hook-app").await;
    let controller =
        support::Controller::builder(&s.client, &s.ns, support::sts_issuer(&s.env.moto_endpoint))
            .start()
            .await;
    let hook = start(&s.client, settings(&s.ns, lifetimes()), true).await;
    install(
        &s.client,
        &configuration(&format!("kaic-{}", s.ns), hook.addr.port(), &[&s.ns], false),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;

    support::apply_manifest(
        &s.client,
        "deploy/example-app-webhook.yaml",
        Some(&s.ns),
        false,
    )
    .await;
    let deployment: Deployment = Api::namespaced(s.client.clone(), &s.ns)
        .get("my-app")
        .await
        .expect("deployment");
    let template = deployment.spec.template;
    let mut pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        ..Default::default()
    };
    pod.metadata.name = Some("my-app-0".into());
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod admitted");

    let spec = created.spec.as_ref().expect("spec");
    let want_env: Vec<(String, String)> =
        std::iter::once(("AWS_DEFAULT_REGION".into(), "eu-central-1".into()))
            .chain(
                mutate::environment(None)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v)),
            )
            .collect();
    assert_eq!(env_of(&created), want_env);
    let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    let ours: Vec<_> = mounts
        .iter()
        .filter(|m| m.mount_path == mutate::MOUNT_PATH)
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].name, mutate::VOLUME_NAME);
    assert_eq!(ours[0].read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mutate::VOLUME_NAME)
        .expect("volume");
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("my-app-role")
    );

    // The pod's environment, with the Secret laid out at /meta/aws-iam as the kubelet does.
    let _: Secret = wait_for("the role's Secret", || {
        let secrets = s.secrets.clone();
        async move { secrets.get_opt("my-app-role").await.ok().flatten() }
    })
    .await;
    // The kubelet's own volume code lays it out; the clients run as the pod's non-root user.
    let volume = support::kubelet::SecretVolume::start(
        s.env,
        &s.ns,
        "my-app-role",
        &support::kubelet::VolumeSpec::default(),
    )
    .await;
    let python = s.env.venv.join("bin/python");
    let aws = s.env.venv.join("bin/aws");
    let want_arn = format!(
        "arn:aws:sts::123456789012:assumed-role/my-app-role/{}@my-app-role",
        s.ns
    );
    for (client, program, args) in [
        (
            "boto3",
            python.to_str().expect("path"),
            vec![
                "-c",
                "import boto3,os; print(boto3.client('sts', endpoint_url=os.environ['EP']).get_caller_identity()['Arn'])",
            ],
        ),
        (
            "aws cli",
            aws.to_str().expect("path"),
            vec![
                "sts",
                "get-caller-identity",
                "--endpoint-url",
                &s.env.moto_endpoint,
                "--query",
                "Arn",
                "--output",
                "text",
            ],
        ),
    ] {
        let home = tempfile::tempdir().expect("home");
        let mut cmd = support::kubelet::container(
            &volume.dir,
            support::kubelet::PodUser::default(),
            Some(home.path()),
            program,
        );
        cmd.args(&args);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            cmd.env_remove(k);
        }
        cmd.env("HOME", home.path()).env("EP", &s.env.moto_endpoint);
        for (k, v) in env_of(&created) {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the SDK client");
        assert!(
            out.status.success(),
            "{client} with the injected environment: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want_arn,
            "{client}"
        );
    }
    // The SDK matrix's own clients (tests/sdk/), with nothing but the pod's environment, the
    // STS endpoint and AWS_REGION (the template sets only AWS_DEFAULT_REGION, which JavaScript
    // and Java do not read; --webhook-region would inject both).
    let sdk_dir = std::env::var_os("KAIC_SDK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let out = std::process::Command::new(support::repo().join("scripts/sdk-clients.sh"))
                .output()
                .expect("scripts/sdk-clients.sh runs");
            assert!(out.status.success(), "scripts/sdk-clients.sh failed");
            String::from_utf8_lossy(&out.stdout).trim().into()
        });
    for sdk in ["go", "js", "java2", "java1"] {
        let program = sdk_dir.join("bin").join(sdk);
        let home = tempfile::tempdir().expect("home");
        let mut cmd = support::kubelet::container(
            &volume.dir,
            support::kubelet::PodUser::default(),
            Some(home.path()),
            &program.to_string_lossy(),
        );
        cmd.args(["--count", "1", "--interval-ms", "1000"]);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("AWS_ENDPOINT_URL_STS", &s.env.moto_endpoint)
            .env("AWS_REGION", "us-east-1")
            .envs(env_of(&created));
        let out = cmd.output().expect("run the SDK client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with(&format!("OK {want_arn} ")),
            "{sdk} with the injected environment: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(hook);
    controller.stop().await;
}

#[tokio::test]
async fn a_service_accounts_role_reaches_its_pods_only_in_namespaces_labelled_for_it() {
    let s = support::scene("hook-sa").await;
    let other = s.env.namespace(&s.client, "hook-sa-off").await;
    let namespaces: Api<Namespace> = Api::all(s.client.clone());
    namespaces
        .patch(
            &s.ns,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"zalando.org/aws-iam-serviceaccounts": "enabled"}}}),
            ),
        )
        .await
        .expect("label namespace");
    let hook = start(&s.client, settings(&s.ns, lifetimes()), true).await;
    install(
        &s.client,
        &configuration(
            &format!("kaic-{}", s.ns),
            hook.addr.port(),
            &[&s.ns, &other],
            false,
        ),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;

    for ns in [&s.ns, &other] {
        let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), ns);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("builder".into()),
                annotations: Some(
                    [(
                        mutate::SERVICE_ACCOUNT_ANNOTATION.to_string(),
                        "ci".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        sas.create(&PostParams::default(), &sa).await.expect("sa");
    }
    let pod = |name: &str, sa: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "main", "image": "busybox"}]}
        }))
        .expect("pod")
    };
    // Created right after its ServiceAccount: the cache may not have it yet, and the webhook
    // reads it once from the API server.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let built = pods
        .create(&PostParams::default(), &pod("build", "builder"))
        .await
        .expect("pod");
    assert!(is_injected(&built), "{:?}", built.spec);
    let volume = built
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    assert!(
        volume
            .iter()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("ci"))
    );
    let plain = pods
        .create(&PostParams::default(), &pod("plain", "default"))
        .await
        .expect("pod");
    assert!(!is_injected(&plain));
    let mut own = pod("own", "builder");
    own.metadata.labels = Some([(ROLE_LABEL.to_string(), "own-role".to_string())].into());
    let own = pods
        .create(&PostParams::default(), &own)
        .await
        .expect("pod");
    let vols = own
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    assert!(
        vols.iter()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("own-role")),
        "the pod's own role wins"
    );
    // Same ServiceAccount annotation, but the namespace is not labelled: not sent, not mutated.
    let elsewhere: Api<Pod> = Api::namespaced(s.client.clone(), &other);
    let p = elsewhere
        .create(&PostParams::default(), &pod("build", "builder"))
        .await
        .expect("pod");
    assert!(!is_injected(&p));
    drop(hook);
}

#[tokio::test]
async fn passing_the_webhook_again_or_creating_an_injected_spec_duplicates_nothing() {
    let s = support::scene("hook-again").await;
    let hook = start(&s.client, settings(&s.ns, lifetimes()), true).await;
    install(
        &s.client,
        &configuration(&format!("kaic-{}", s.ns), hook.addr.port(), &[&s.ns], true),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let first = pods
        .create(&PostParams::default(), &labelled_pod("first", "app"))
        .await
        .expect("pod");
    let want = mutate::environment(None);
    assert_eq!(env_of(&first).len(), want.len(), "{:?}", env_of(&first));
    let mut again = first.clone();
    again.metadata = ObjectMeta {
        name: Some("again".into()),
        labels: first.metadata.labels.clone(),
        ..Default::default()
    };
    let second = pods
        .create(&PostParams::default(), &again)
        .await
        .expect("pod");
    let (a, b) = (
        serde_json::to_value(&first).expect("json"),
        serde_json::to_value(&second).expect("json"),
    );
    assert_eq!(projection(&a), projection(&b));
    drop(hook);
}

#[tokio::test]
async fn with_the_webhook_down_opted_in_pods_are_refused_and_others_admitted() {
    let s = support::scene("hook-down").await;
    let hook = start(&s.client, settings(&s.ns, lifetimes()), true).await;
    install(
        &s.client,
        &configuration(&format!("kaic-{}", s.ns), hook.addr.port(), &[&s.ns], false),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;
    drop(hook);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let message = wait_for("opted-in pods to be refused", || {
        let pods = pods.clone();
        async move {
            let name = format!("down-{}", support::rand_suffix());
            match pods
                .create(&PostParams::default(), &labelled_pod(&name, "app"))
                .await
            {
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            }
        }
    })
    .await;
    assert!(
        message.contains("failed calling webhook \"pod-role.aws-iam.zalando.org\""),
        "{message}"
    );
    let mut plain = labelled_pod("plain", "x");
    plain.metadata.labels = None;
    pods.create(&PostParams::default(), &plain)
        .await
        .expect("a pod that did not opt in is admitted");
}

#[tokio::test]
async fn certificate_rotation_while_pods_are_created_fails_no_admission() {
    let s = support::scene("hook-rotate").await;
    let short = Lifetimes {
        ca: Duration::from_secs(45),
        serving: Duration::from_secs(15),
        overlap: Duration::from_secs(3),
    };
    // The leader rotates; the API server calls a follower, which only follows the Secret.
    let leader = start(&s.client, settings(&s.ns, short), true).await;
    let metrics = Arc::new(kube_aws_iam_controller::metrics::Metrics::new());
    let follower = webhook::start(
        s.client.clone(),
        settings(&s.ns, short),
        metrics.clone(),
        Arc::new(|| false),
        None,
        None,
    )
    .await
    .expect("follower starts");
    install(
        &s.client,
        &configuration(
            &format!("kaic-{}", s.ns),
            follower.addr.port(),
            &[&s.ns],
            false,
        ),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (created, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let creator = {
        let (stop, created, failed, pods) =
            (stop.clone(), created.clone(), failed.clone(), pods.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let name = format!("rot-{}", support::rand_suffix());
                match pods
                    .create(&PostParams::default(), &labelled_pod(&name, "app"))
                    .await
                {
                    Ok(p) if is_injected(&p) => {
                        created.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{name} admitted unmutated"));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(e.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            errors
        })
    };
    // Watch the Secret until a second CA signs and the first has left the bundle.
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let first_ca = webhook::material(&secrets.get("webhook-tls").await.expect("secret"))
        .and_then(|m| m.ca)
        .expect("ca")
        .common_name;
    wait_for_within(
        "a CA rotation to complete",
        Duration::from_secs(180),
        || {
            let secrets = secrets.clone();
            let first_ca = first_ca.clone();
            async move {
                let m = webhook::material(&secrets.get("webhook-tls").await.ok()?)?;
                let ca = m.ca?;
                (ca.common_name != first_ca && m.previous_ca.is_none() && m.next_ca.is_none())
                    .then_some(())
            }
        },
    )
    .await;
    // A few more seconds on the new CA alone: the follower must be serving its certificate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let errors = creator.await.expect("creator");
    let (ok, bad) = (
        created.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    let text = metrics.render();
    // A missing series fails the test instead of reading as 0.
    let sample = |name: &str| support::metric(&text, name);
    let (sum, count) = (
        sample("kaic_webhook_admission_duration_seconds_sum"),
        sample("kaic_webhook_admission_duration_seconds_count"),
    );
    eprintln!(
        "rotation: {ok} pods admitted, {bad} failed; follower answered {count} admissions, mean {:.3} ms",
        1000.0 * sum / count.max(1.0)
    );
    assert!(ok >= 20, "only {ok} pods created");
    assert_eq!(bad, 0, "failed admissions during rotation: {errors:?}");
    assert!(follower.certs.is_loaded());
    drop((leader, follower));
    let _ = pods
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
}

#[tokio::test]
async fn the_mutating_admission_policy_gives_every_pod_of_the_table_what_mutate_gives_it() {
    let s = support::scene("hook-policy").await;
    let text =
        std::fs::read_to_string(support::repo().join("deploy/webhook-policy.yaml")).expect("yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| <Value as serde::Deserialize>::deserialize(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let name = format!("kaic-{}", s.ns);
    for mut doc in docs {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        doc["metadata"]["name"] = json!(name);
        if kind == "MutatingAdmissionPolicyBinding" {
            doc["spec"]["policyName"] = json!(name);
            doc["spec"]["matchResources"]["namespaceSelector"] = json!({
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [s.ns]}]
            });
        }
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            &kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(s.client.clone(), &ar);
        let obj: DynamicObject = serde_json::from_value(doc).expect("object");
        api.patch(
            &name,
            &PatchParams::apply("kaic-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("{kind} must be served by admissionregistration.k8s.io/v1: {e}")
        });
    }
    wait_until_serving(&s.client, &s.ns).await;

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        #[serde(default = "yes")]
        policy: bool,
        pod: Value,
        want: Value,
    }
    fn yes() -> bool {
        true
    }
    let cases: Vec<Case> = serde_yaml::from_str(
        &std::fs::read_to_string(support::repo().join("tests/golden/webhook/cases.yaml"))
            .expect("table"),
    )
    .expect("table");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let mut checked = 0;
    for c in cases.into_iter().filter(|c| c.policy) {
        let pod: Pod = serde_json::from_value(c.pod.clone()).expect("pod");
        let stored = pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("admitted");
        let stored = serde_json::to_value(&stored).expect("json");
        assert_eq!(projection(&stored), projection(&c.want), "{}", c.name);
        // Reinvocation: the admitted spec passes the policy again unchanged.
        let mut again: Pod = serde_json::from_value(stored.clone()).expect("pod");
        again.metadata = ObjectMeta {
            name: Some(format!("{}-again", pod.name_any())),
            labels: again.metadata.labels.clone(),
            ..Default::default()
        };
        let again = pods
            .create(&PostParams::default(), &again)
            .await
            .expect("admitted");
        assert_eq!(
            projection(&serde_json::to_value(&again).expect("json")),
            projection(&c.want),
            "{} (second pass)",
            c.name
        );
        checked += 1;
    }
    assert!(checked >= 6);
    for kind in ["MutatingAdmissionPolicyBinding", "MutatingAdmissionPolicy"] {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(s.client.clone(), &ar);
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
}

#[test]
fn the_injected_environment_covers_every_row_of_the_sdk_matrix() {
    // docs/sdk-configuration.md's support matrix, which tests/sdk.rs measures: every variable
    // of every SDK's credential_process configuration, and both region variables.
    let text =
        std::fs::read_to_string(support::repo().join("docs/sdk-configuration.md")).expect("docs");
    let injected: Vec<String> = mutate::environment(Some("eu-west-1"))
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let names: Vec<&str> = injected
        .iter()
        .filter_map(|kv| kv.split('=').next())
        .collect();
    let mut rows = 0;
    for line in text
        .lines()
        .skip_while(|l| {
            !l.starts_with(
                "| SDK | version tested | region variable | credential_process environment",
            )
        })
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let spans = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        for kv in spans(cells[3]) {
            assert!(injected.contains(&kv), "{}: {kv} is not injected", cells[0]);
        }
        for region in spans(cells[2]) {
            assert!(
                names.contains(&region.as_str()),
                "{}: {region} is not injected",
                cells[0]
            );
        }
        rows += 1;
    }
    assert!(rows >= 7, "the SDK table was not found");
    assert!(injected.contains(&"AWS_EC2_METADATA_DISABLED=true".to_string()));
}

#[test]
fn the_endpoint_modes_environment_is_the_sdk_matrixs_endpoint_column() {
    // Every row's endpoint environment (measured by tests/sdk.rs) is injected, and nothing but
    // it and AWS_EC2_METADATA_DISABLED.
    let text =
        std::fs::read_to_string(support::repo().join("docs/sdk-configuration.md")).expect("docs");
    let header = text
        .lines()
        .find(|l| l.starts_with("| SDK | version tested |"))
        .expect("the SDK table");
    let column = header
        .trim_matches('|')
        .split('|')
        .position(|c| c.trim() == "endpoint environment")
        .expect("an endpoint environment column");
    let mut injected: Vec<String> = kube_aws_iam_controller::webhook::endpoint::environment(None)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .filter(|kv| kv != "AWS_EC2_METADATA_DISABLED=true")
        .collect();
    injected.sort();
    let mut rows = 0;
    for line in text
        .lines()
        .skip_while(|l| *l != header)
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let mut spans: Vec<String> = cells[column]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        spans.sort();
        assert_eq!(spans, injected, "{}", cells[0]);
        rows += 1;
    }
    assert!(rows >= 7, "the SDK table has {rows} rows");
}

#[tokio::test]
async fn the_shipped_rbac_is_enough_to_serve_admissions_and_rotate_the_certificate() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let s = support::scene("hook-rbac").await;
    support::apply_manifest(&s.client, "deploy/rbac.yaml", None, false).await;
    support::apply_manifest(&s.client, "deploy/webhook-rbac.yaml", None, false).await;
    let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), "kube-system");
    let token = sas
        .create_token_request(
            "kube-aws-iam-controller",
            &PostParams::default(),
            &TokenRequest::default(),
        )
        .await
        .expect("token")
        .status
        .expect("status")
        .token;
    let as_controller = s.env.token_client(&token.expect("token"));
    let mut st = settings(
        "kube-system",
        Lifetimes {
            ca: Duration::from_secs(365 * 24 * 3600),
            serving: Duration::from_secs(9),
            overlap: Duration::from_secs(2),
        },
    );
    st.secret = "kube-aws-iam-controller-webhook-tls".into();
    st.configuration = "kube-aws-iam-controller".into();
    let hook = start(&as_controller, st, true).await;
    // The shipped name (the RBAC allows only that one), confined to this test's namespace.
    install(
        &s.client,
        &configuration("kube-aws-iam-controller", hook.addr.port(), &[&s.ns], false),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), "kube-system");
    let serving = |secret: Secret| {
        webhook::material(&secret)
            .and_then(|m| m.serving)
            .map(|s| s.cert)
    };
    let first = serving(
        secrets
            .get("kube-aws-iam-controller-webhook-tls")
            .await
            .expect("secret"),
    );
    assert!(first.is_some());
    wait_for("the serving certificate to be reissued", || {
        let (secrets, first) = (secrets.clone(), first.clone());
        async move {
            let now = serving(
                secrets
                    .get("kube-aws-iam-controller-webhook-tls")
                    .await
                    .ok()?,
            );
            (now.is_some() && now != first).then_some(())
        }
    })
    .await;
    wait_until_serving(&s.client, &s.ns).await;
    drop(hook);
}

#[tokio::test]
async fn the_binary_with_the_webhook_flag_wires_pods_and_counts_them() {
    let s = support::scene("hook-bin").await;
    let port = support::free_port();
    let name = format!("kaic-{}", s.ns);
    let flags = [
        "--webhook".to_string(),
        format!("--webhook-addr=127.0.0.1:{port}"),
        format!("--webhook-namespace={}", s.ns),
        "--webhook-san=127.0.0.1".into(),
        format!("--webhook-configuration={name}"),
        "--webhook-region=eu-west-1".into(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bin = support::start_binary(s.env, &s.ns, &s.env.moto_endpoint, &flags).await;
    install(&s.client, &configuration(&name, port, &[&s.ns], false)).await;
    wait_until_serving(&s.client, &s.ns).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let pod = pods
        .create(&PostParams::default(), &labelled_pod("app", "app"))
        .await
        .expect("admitted");
    let env = env_of(&pod);
    for region in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        assert!(
            env.contains(&(region.to_string(), "eu-west-1".to_string())),
            "{env:?}"
        );
    }
    let metrics = bin.admin("/metrics").await;
    assert!(
        metrics.contains("kaic_webhook_admissions_total{result=\"mutated\"}"),
        "{metrics}"
    );
    bin.kill();
}

#[tokio::test]
async fn certificate_files_are_served_and_reloaded_when_they_change() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube_aws_iam_controller::webhook::certs::{self, Material, Step};
    let s = support::scene("hook-files").await;
    // Two independent CAs with a serving certificate each, as cert-manager would issue them.
    let issue = || {
        certs::apply(
            &Step::Create,
            &Material::default(),
            &["127.0.0.1".to_string()],
            chrono::Utc::now(),
            &lifetimes(),
        )
        .expect("certificate")
    };
    let (one, two) = (issue(), issue());
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let write = |m: &Material| {
        let serving = m.serving.as_ref().expect("serving");
        std::fs::write(&cert, &serving.cert).expect("cert");
        std::fs::write(&key, &serving.key).expect("key");
    };
    write(&one);
    let mut st = settings(&s.ns, lifetimes());
    st.tls = TlsSource::Files {
        cert: cert.clone(),
        key: key.clone(),
    };
    let hook = start(&s.client, st, true).await;
    let name = format!("kaic-{}", s.ns);
    let set_bundle = |pem: String| {
        let client = s.client.clone();
        let name = name.clone();
        async move {
            let api: Api<MutatingWebhookConfiguration> = Api::all(client);
            let mut mwc = api.get(&name).await.expect("configuration");
            for w in mwc.webhooks.iter_mut().flatten() {
                w.client_config.ca_bundle = Some(k8s_openapi::ByteString(pem.clone().into_bytes()));
            }
            api.replace(&name, &PostParams::default(), &mwc)
                .await
                .expect("caBundle");
        }
    };
    install(
        &s.client,
        &configuration(&name, hook.addr.port(), &[&s.ns], false),
    )
    .await;
    set_bundle(one.bundle()).await;
    wait_until_serving(&s.client, &s.ns).await;
    // In file mode the controller writes neither a Secret nor the caBundle.
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(secrets.get_opt("webhook-tls").await.expect("get").is_none());

    // cert-manager renews with another CA: the API server now trusts only that one, so the
    // webhook answers again only once it serves the new files (no restart).
    write(&two);
    set_bundle(two.bundle()).await;
    wait_until_serving(&s.client, &s.ns).await;
    drop(hook);
}

/// Endpoint mode through the real API server (which validates the native sidecar: a startup
/// probe is allowed on an init container only with `restartPolicy: Always`), passing the
/// webhook twice: the annotated pod gets the sidecar first and the endpoint environment, its
/// containers no Secret mount; a pod without the annotation is wired as before; an unknown
/// mode is refused.
#[tokio::test]
async fn an_endpoint_pod_gets_the_native_sidecar_and_no_secret_mount_through_the_api_server() {
    use kube_aws_iam_controller::webhook::endpoint::{self, Delivery, MODE_ANNOTATION, Mode};
    let s = support::scene("hook-endpoint").await;
    let image = "registry.example/kube-aws-iam-controller:test";
    let mut settings = settings(&s.ns, lifetimes());
    settings.delivery = Delivery {
        default: Mode::Process,
        image: Some(image.into()),
    };
    let hook = start(&s.client, settings, true).await;
    install(
        &s.client,
        &configuration(&format!("kaic-{}", s.ns), hook.addr.port(), &[&s.ns], true),
    )
    .await;
    wait_until_serving(&s.client, &s.ns).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let annotated = |name: &str, mode: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {ROLE_LABEL: "app"},
                         "annotations": {MODE_ANNOTATION: mode}},
            "spec": {"initContainers": [{"name": "migrate", "image": "m"}],
                     "containers": [{"name": "main", "image": "distroless"}]}
        }))
        .expect("pod")
    };
    let pod = pods
        .create(&PostParams::default(), &annotated("ep", "endpoint"))
        .await
        .expect("the API server admits the mutated pod");
    let spec = pod.spec.as_ref().expect("spec");
    let inits = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(
        inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        [endpoint::SIDECAR_NAME, "migrate"],
        "one sidecar, first, after two passes"
    );
    assert_eq!(inits[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(inits[0].image.as_deref(), Some(image));
    assert!(inits[0].startup_probe.is_some());
    for c in inits[1..].iter().chain(&spec.containers) {
        let env: Vec<(String, String)> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        let want: Vec<(String, String)> = endpoint::environment(None)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(env, want, "{}", c.name);
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, [endpoint::TOKEN_DIR], "{}", c.name);
    }
    let plain = pods
        .create(&PostParams::default(), &labelled_pod("process", "app"))
        .await
        .expect("pod");
    assert_eq!(
        env_of(&plain).len(),
        mutate::environment(None).len(),
        "no annotation: the Secret mount as before"
    );
    assert!(
        plain
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none()
    );
    let refused = pods
        .create(&PostParams::default(), &annotated("bad", "sidecar"))
        .await
        .expect_err("an unknown mode is refused");
    assert!(
        refused.to_string().contains("neither process nor endpoint"),
        "{refused}"
    );
    drop(hook);
}

/// Installs deploy/webhook-policy.yaml under `name`, bound to namespace `ns` only.
async fn install_policy(client: &Client, name: &str, ns: &str) {
    let text =
        std::fs::read_to_string(support::repo().join("deploy/webhook-policy.yaml")).expect("yaml");
    for mut doc in serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| <Value as serde::Deserialize>::deserialize(d).ok())
        .filter(|d| d.is_object())
    {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        doc["metadata"]["name"] = json!(name);
        if kind == "MutatingAdmissionPolicyBinding" {
            doc["spec"]["policyName"] = json!(name);
            doc["spec"]["matchResources"]["namespaceSelector"] = json!({
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]
            });
        }
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            &kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let obj: DynamicObject = serde_json::from_value(doc).expect("object");
        api.patch(
            name,
            &PatchParams::apply("kaic-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

/// The MutatingAdmissionPolicy's endpoint mode gives each pod shape exactly the spec the
/// webhook gives it (both as stored by the API server, after its defaults), and a second pass
/// of either changes nothing.
#[tokio::test]
async fn the_mutating_admission_policy_wires_endpoint_pods_as_the_webhook_does() {
    use kube_aws_iam_controller::webhook::endpoint::{Delivery, MODE_ANNOTATION, Mode};
    let by_hook = support::scene("ep-hook").await;
    let by_policy = support::scene("ep-policy").await;
    let text =
        std::fs::read_to_string(support::repo().join("deploy/webhook-policy.yaml")).expect("yaml");
    let image = text
        .split("expression: \"'")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .filter(|i| i.contains("kube-aws-iam-controller"))
        .expect("the policy's image variable")
        .to_string();
    let mut settings = settings(&by_hook.ns, lifetimes());
    settings.delivery = Delivery {
        default: Mode::Process,
        image: Some(image),
    };
    let hook = start(&by_hook.client, settings, true).await;
    install(
        &by_hook.client,
        &configuration(
            &format!("kaic-{}", by_hook.ns),
            hook.addr.port(),
            &[&by_hook.ns],
            false,
        ),
    )
    .await;
    let policy = format!("kaic-{}", by_policy.ns);
    install_policy(&by_policy.client, &policy, &by_policy.ns).await;
    wait_until_serving(&by_hook.client, &by_hook.ns).await;
    wait_until_serving(&by_policy.client, &by_policy.ns).await;

    let shapes = [
        json!({"containers": [{"name": "app", "image": "distroless"}]}),
        json!({"initContainers": [{"name": "migrate", "image": "m", "env": [{"name": "X", "value": "1"}]}],
               "containers": [{"name": "app", "image": "a"}, {"name": "b", "image": "b"}]}),
        json!({"volumes": [{"name": "creds", "secret": {"secretName": "app"}}],
               "containers": [{"name": "app", "image": "a",
                               "env": [{"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}]}]}),
        json!({"volumes": [{"name": "aws-iam-token", "configMap": {"name": "x"}}],
               "containers": [{"name": "app", "image": "a"}]}),
    ];
    let spec_of = |pod: &Pod| -> Value {
        let mut spec = serde_json::to_value(pod.spec.as_ref().expect("spec")).expect("json");
        spec.as_object_mut().map(|o| o.remove("nodeName"));
        spec
    };
    for (i, shape) in shapes.iter().enumerate() {
        let mut shape = shape.clone();
        shape["automountServiceAccountToken"] = json!(false);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("shape-{i}"), "labels": {ROLE_LABEL: "app"},
                         "annotations": {MODE_ANNOTATION: "endpoint"}},
            "spec": shape
        }))
        .expect("pod");
        let mut specs = Vec::new();
        for s in [&by_hook, &by_policy] {
            let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
            let stored = pods
                .create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("shape {i} in {}: {e}", s.ns));
            let mut again = stored.clone();
            again.metadata = ObjectMeta {
                name: Some(format!("shape-{i}-again")),
                labels: stored.metadata.labels.clone(),
                annotations: stored.metadata.annotations.clone(),
                ..Default::default()
            };
            let again = pods
                .create(&PostParams::default(), &again)
                .await
                .expect("second pass");
            assert_eq!(
                spec_of(&again),
                spec_of(&stored),
                "shape {i} in {}: second pass",
                s.ns
            );
            specs.push(spec_of(&stored));
        }
        assert_eq!(
            specs[0], specs[1],
            "shape {i}: webhook (left) and policy (right) differ"
        );
        let inits = specs[0]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            inits.first().map(|c| c["name"].clone()),
            (i != 3).then(|| json!("aws-iam-credentials")),
            "shape {i}: the sidecar first (none when a volume name is taken)"
        );
    }
    drop(hook);
    for kind in ["MutatingAdmissionPolicyBinding", "MutatingAdmissionPolicy"] {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(by_policy.client.clone(), &ar);
        let _ = api.delete(&policy, &DeleteParams::default()).await;
    }
}

/// Issue 25: the certificate used to appear one check interval (30 s) after install, because
/// rotation looked at leadership once, before the election had taken the Lease, and then slept.
/// With a check interval far longer than the test, the certificate must appear as soon as the
/// replica leads; both writes carry the controller's field manager, and the caBundle is patched
/// without taking over the rest of the configuration. (Failed on the old code: no certificate
/// within 60 s, the Secret and caBundle written by manager "unknown".)
#[tokio::test]
async fn rotation_starts_as_soon_as_the_replica_leads_and_writes_as_the_controller() {
    let s = support::scene("hook-lead").await;
    let mut st = settings(&s.ns, lifetimes());
    st.check_interval = Duration::from_secs(600);
    st.configuration = format!("kaic-lead-{}", s.ns);
    let leads = Arc::new(AtomicBool::new(false));
    let flag = leads.clone();
    let hook = webhook::start(
        s.client.clone(),
        st.clone(),
        Arc::new(kube_aws_iam_controller::metrics::Metrics::new()),
        Arc::new(move || flag.load(Ordering::SeqCst)),
        None,
        None,
    )
    .await
    .expect("webhook starts");
    install(
        &s.client,
        &configuration(&st.configuration, hook.addr.port(), &[&s.ns], true),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        secrets.get_opt(&st.secret).await.expect("read").is_none(),
        "a replica that does not lead wrote the certificate"
    );
    let became_leader = std::time::Instant::now();
    leads.store(true, Ordering::SeqCst);
    wait_for_within(
        "the certificate once the replica leads",
        Duration::from_secs(60),
        || {
            let secrets = secrets.clone();
            let name = st.secret.clone();
            async move { secrets.get_opt(&name).await.ok().flatten() }
        },
    )
    .await;
    println!(
        "certificate written {:.2}s after the replica became leader (check interval 600 s)",
        became_leader.elapsed().as_secs_f64()
    );
    wait_until_serving(&s.client, &s.ns).await;
    let managers = |fields: Option<
        Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>,
    >|
     -> Vec<(String, String)> {
        fields
            .into_iter()
            .flatten()
            .map(|m| {
                let owned = m.fields_v1.map(|f| f.0.to_string()).unwrap_or_default();
                (m.manager.unwrap_or_default(), owned)
            })
            .collect()
    };
    let secret = secrets.get(&st.secret).await.expect("secret");
    let secret_managers = managers(secret.metadata.managed_fields);
    assert!(
        secret_managers
            .iter()
            .all(|(m, _)| m == "kube-aws-iam-controller"),
        "{secret_managers:?}"
    );
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(s.client.clone());
    let mwc = mwcs.get(&st.configuration).await.expect("configuration");
    let mwc_managers = managers(mwc.metadata.managed_fields.clone());
    let ours: Vec<&String> = mwc_managers
        .iter()
        .filter(|(m, _)| m == "kube-aws-iam-controller")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(ours.len(), 1, "{mwc_managers:?}");
    assert!(ours[0].contains("caBundle"), "{}", ours[0]);
    for field in ["failurePolicy", "objectSelector", "rules", "sideEffects"] {
        assert!(
            !ours[0].contains(field),
            "the controller took over {field}: {}",
            ours[0]
        );
    }
    assert!(
        mwc_managers.iter().all(|(m, _)| m != "unknown"),
        "{mwc_managers:?}"
    );
    for w in mwc.webhooks.iter().flatten() {
        assert!(
            w.client_config.ca_bundle.is_some(),
            "{} has no caBundle",
            w.name
        );
    }
    drop(hook);
}

/// Issue 25: leadership is checked right before each write, not once per round. A replica that
/// leads when the round starts and has lost the Lease by the time it would write (here: the
/// first answer is "leader", every later one "not leader") writes neither the caBundle nor the
/// Secret. (Failed on the old code: one check per round, then both writes.)
#[tokio::test]
async fn a_replica_that_lost_the_lease_after_its_check_writes_nothing() {
    let s = support::scene("hook-lost").await;
    let mut st = settings(&s.ns, lifetimes());
    st.configuration = format!("kaic-lost-{}", s.ns);
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let hook = webhook::start(
        s.client.clone(),
        st.clone(),
        Arc::new(kube_aws_iam_controller::metrics::Metrics::new()),
        Arc::new(move || count.fetch_add(1, Ordering::SeqCst) == 0),
        None,
        None,
    )
    .await
    .expect("webhook starts");
    install(
        &s.client,
        &configuration(&st.configuration, hook.addr.port(), &[&s.ns], false),
    )
    .await;
    wait_for("leadership to be asked again after the first round", || {
        let asked = asked.clone();
        async move { (asked.load(Ordering::SeqCst) >= 3).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(
        secrets.get_opt(&st.secret).await.expect("read").is_none(),
        "the certificate Secret was written without leadership"
    );
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(s.client.clone());
    let mwc = mwcs.get(&st.configuration).await.expect("configuration");
    assert!(
        mwc.webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_none()),
        "the caBundle was written without leadership"
    );
    println!(
        "leadership asked {} times, nothing written",
        asked.load(Ordering::SeqCst)
    );
    drop(hook);
}
