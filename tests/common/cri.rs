//! A minimal CRI client (what kubelet does for a pod with
//! `runtimeClassName: nvidia`), on the k8s-cri crate's generated types.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

type Error = Box<dyn std::error::Error>;

/// One pod of one container, as kubelet would ask for it after the device
/// plugin's Allocate: the fields each of its strategies fills.
#[derive(Clone, Debug, Default)]
pub struct Pod<'a> {
    pub image: &'a str,
    /// The RuntimeClass's handler (`""`: containerd's default runtime).
    pub handler: &'a str,
    /// `KEY=value`s (the envvar strategy's NVIDIA_VISIBLE_DEVICES).
    pub env: Vec<String>,
    /// Container annotations (the cdi-annotations strategy).
    pub annotations: Vec<(String, String)>,
    /// `(host path, container path)` read-only binds (volume-mounts).
    pub mounts: Vec<(String, String)>,
    /// Fully qualified CDI names (the cdi-cri strategy: CRI `CDIDevices`).
    pub cdi_devices: Vec<String>,
    pub privileged: bool,
    /// What the container runs; [`super::GPU_SCRIPT`] when empty.
    pub command: Vec<String>,
}

impl<'a> Pod<'a> {
    pub fn new(image: &'a str, handler: &'a str) -> Pod<'a> {
        Pod {
            image,
            handler,
            ..Default::default()
        }
    }

    pub fn env(mut self, pairs: &[&str]) -> Self {
        self.env.extend(pairs.iter().map(|s| s.to_string()));
        self
    }
}

/// Runs a host-network pod with `handler` and one container running
/// `sh -c GPU_SCRIPT` with `env`; returns the container's stdout.
pub fn run_pod(
    socket: &Path,
    log_dir: &Path,
    image: &str,
    handler: &str,
    env: &[&str],
) -> Result<String, Error> {
    run(socket, log_dir, &Pod::new(image, handler).env(env))
}

/// Runs `pod` to completion; the container's stdout, or an error with its
/// exit code and log.
pub fn run(socket: &Path, log_dir: &Path, pod: &Pod) -> Result<String, Error> {
    block_on(run_pod_async(socket, log_dir, pod))
}

/// The runtime handlers the CRI's Status lists (containerd 1.7+ and 2.x:
/// kubelet copies them to node.status.runtimeHandlers), by name.
pub fn runtime_handlers(socket: &Path) -> Result<Vec<String>, Error> {
    block_on(async {
        let mut client = connect(socket).await?;
        let status = client
            .status(StatusRequest { verbose: false })
            .await?
            .into_inner();
        Ok(status
            .runtime_handlers
            .into_iter()
            .map(|handler| handler.name)
            .collect())
    })
}

/// Version, then a verbose Status, as tonic reads them: what the
/// library's own CRI client (src/engine_api) is checked against.
pub fn version_and_status(socket: &Path) -> Result<(VersionResponse, StatusResponse), Error> {
    block_on(async {
        let mut client = connect(socket).await?;
        let version = client
            .version(VersionRequest {
                version: "0.1.0".into(),
            })
            .await?
            .into_inner();
        let status = client
            .status(StatusRequest { verbose: true })
            .await?
            .into_inner();
        Ok((version, status))
    })
}

/// Whether the CRI answers a Version call.
pub fn answers(socket: &Path) -> bool {
    block_on(async {
        let mut client = connect(socket).await?;
        client
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await?;
        Ok::<_, Error>(())
    })
    .is_ok()
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, Error> {
    let socket = socket.to_path_buf();
    // The URI is ignored: every connection goes to the unix socket.
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

async fn run_pod_async(socket: &Path, log_dir: &Path, pod: &Pod<'_>) -> Result<String, Error> {
    let mut client = connect(socket).await?;
    let uid = format!("ncr-{}-{}", std::process::id(), super::next_counter());
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "gpu-pod".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // No hostname: a host-network pod shares the host's UTS
        // namespace, and runc refuses to set one there.
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    // Host networking: no CNI on this machine.
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                // containerd refuses a privileged container in a sandbox
                // that is not.
                privileged: pod.privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: pod.handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let result = run_container(&mut client, &sandbox, &sandbox_config, log_dir, pod).await;
    let _ = client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await;
    let _ = client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await;
    result
}

async fn run_container(
    client: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    sandbox_config: &PodSandboxConfig,
    log_dir: &Path,
    pod: &Pod<'_>,
) -> Result<String, Error> {
    let envs = pod
        .env
        .iter()
        .map(|kv| {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            KeyValue {
                key: key.into(),
                value: value.into(),
            }
        })
        .collect();
    let command = match pod.command.is_empty() {
        true => vec!["sh".into(), "-c".into(), super::GPU_SCRIPT.into()],
        false => pod.command.clone(),
    };
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "gpu".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: pod.image.into(),
            ..Default::default()
        }),
        command,
        envs,
        annotations: pod.annotations.iter().cloned().collect(),
        mounts: pod
            .mounts
            .iter()
            .map(|(host, container)| Mount {
                host_path: host.clone(),
                container_path: container.clone(),
                readonly: true,
                ..Default::default()
            })
            .collect(),
        cdi_devices: pod
            .cdi_devices
            .iter()
            .map(|name| CdiDevice { name: name.clone() })
            .collect(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: pod.privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        log_path: "gpu.log".into(),
        ..Default::default()
    };
    let container = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = client
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or("no container status")?;
        if status.state == ContainerState::ContainerExited as i32 {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("container still {:?} after 60 s", status.state).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = std::fs::read_to_string(log_dir.join("gpu.log"))?;
    let _ = client
        .remove_container(RemoveContainerRequest {
            container_id: container,
        })
        .await;
    if status.exit_code != 0 {
        return Err(format!("container exited {}: {log}", status.exit_code).into());
    }
    Ok(cri_log_stdout(&log))
}

/// The stdout lines of a CRI log file (`<time> <stream> <tag> <text>`).
fn cri_log_stdout(log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let mut fields = line.splitn(4, ' ');
        let (_, stream, tag, text) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next().unwrap_or(""),
        );
        if stream == Some("stdout") {
            out.push_str(text);
            if tag == Some("F") {
                out.push('\n');
            }
        }
    }
    out
}
