//! Test harness: a real etcd + kube-apiserver (client-certificate admin, RBAC on) and moto's
//! STS server on free 127.0.0.1 ports, one set per test binary; a namespace per test; the
//! controller run in-process or as the built binary; Secret volumes laid out by the kubelet's
//! own code ([`kubelet`]).
//!
//! Every process is started under a small watchdog shell that kills it when the test binary
//! exits, however it exits (end, panic, timeout, SIGKILL), so nothing is left running.
#![allow(dead_code)]
// The watchdog shells live exactly as long as the test binary; nothing waits for them.
#![allow(clippy::zombie_processes)]

pub mod aws;
pub mod bench;
pub mod binary;
pub mod cluster;
pub mod helm;
pub mod kubelet;
pub mod manifests;
pub mod node;
pub mod node_apps;
pub mod pod;
pub mod proxy;
pub mod raw;
pub mod runner;
pub mod sidecar;
pub mod sts_double;
pub mod wait;
pub mod watch_fault;

#[allow(unused_imports)]
pub use aws::*;
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use manifests::*;
#[allow(unused_imports)]
pub use runner::*;
#[allow(unused_imports)]
pub use wait::*;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use aws_credential_types::Credentials;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use kube_aws_iam_controller::aws::CredentialIssuer;
use kube_aws_iam_controller::aws::sts::{StsIssuer, https_client};
use kube_aws_iam_controller::controller::policy::PolicyContext;
use kube_aws_iam_controller::controller::{self, Context, RunOptions, Settings};
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::metrics::Metrics;
use kube_aws_iam_controller::policy::{Guard, PERMITTED_ANNOTATION, PolicyMode};
use kube_aws_iam_controller::runtime::{Parts, Process, ProcessSettings, Shutdown};

pub const ACCOUNT: &str = "123456789012";
pub const BASE_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/";
