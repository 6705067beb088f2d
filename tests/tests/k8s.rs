//! deploy/k8s: both overlays render with `kubectl kustomize`, every object
//! validates against the Kubernetes schemas (`kubernetes-validate`, in the
//! virtualenv scripts/test.sh prepares), and the probes, port and config
//! match what the gateway serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use aeris_tests::cloud::Cloud;
use aeris_tests::http::get;
use aeris_tests::process::binary;

/// Kubernetes version the manifests are validated against.
const K8S_VERSION: &str = "1.30.0";

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The virtualenv with kubernetes-validate (and PyYAML).
fn venv() -> PathBuf {
    std::env::var_os("AERIS_K8S_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/aeris-k8s-venv")
        })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `kubectl kustomize` of an overlay, as YAML.
fn render(overlay: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy().join("k8s/overlays").join(overlay))
        .output()
        .expect("kubectl (Debian kubernetes-client; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validate(file: &Path) -> (bool, String) {
    run(Command::new(venv().join("bin/kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", K8S_VERSION])
        .arg(file))
}

/// The YAML documents as JSON (PyYAML from the same virtualenv).
fn objects(file: &Path) -> Vec<serde_json::Value> {
    let (ok, text) = run(Command::new(venv().join("bin/python")).args([
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        file.to_str().unwrap(),
    ]));
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn find<'a>(objs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_overlays_render_validate_and_match_the_gateways_probes() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(false).await;
    for overlay in ["dev", "prod"] {
        let yaml = render(overlay);
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let (ok, text) = validate(&file);
        assert!(ok, "{overlay} does not validate:\n{text}");
        let objs = objects(&file);
        let ns = if overlay == "dev" {
            "aeris-dev"
        } else {
            "aeris"
        };
        assert!(objs
            .iter()
            .all(|o| o["kind"] == "Namespace" || o["metadata"]["namespace"] == ns));

        let deploy = find(&objs, "Deployment", "aeris-gateway");
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(c["resources"]["requests"]["cpu"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
        let port = &c["ports"][0];
        assert_eq!(port["name"], "http");
        let container_port = port["containerPort"].as_u64().unwrap();
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
        let live = c["livenessProbe"]["httpGet"]["path"].as_str().unwrap();
        let ready = c["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
        // Credentials come from Secret references only.
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            if [
                "AERIS_DATABASE_URL",
                "AERIS_REDIS_URL",
                "AERIS_BROKER__PASSWORD",
            ]
            .contains(&name)
            {
                let secret = e["valueFrom"]["secretKeyRef"]["name"]
                    .as_str()
                    .unwrap_or("");
                assert!(
                    secret.starts_with("aeris-gateway-secrets"),
                    "{name}: {secret}"
                );
            }
        }

        let hpa = find(&objs, "HorizontalPodAutoscaler", "aeris-gateway");
        assert_eq!(hpa["spec"]["minReplicas"], 2);
        assert_eq!(hpa["spec"]["maxReplicas"], 10);
        find(&objs, "PodDisruptionBudget", "aeris-gateway");
        let np = find(&objs, "NetworkPolicy", "aeris-gateway");
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], container_port);
        let egress: Vec<u64> = np["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["ports"][0]["port"].as_u64())
            .collect();
        assert_eq!(
            egress,
            vec![1883, 5432, 6379, 53],
            "broker, PostgreSQL, Redis, DNS only"
        );
        find(&objs, "StatefulSet", "aeris-broker");
        let dev_only = ["aeris-postgis", "aeris-redis"]
            .iter()
            .filter(|n| {
                objs.iter()
                    .any(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == **n)
            })
            .count();
        assert_eq!(dev_only, if overlay == "dev" { 2 } else { 0 });

        // The rendered gateway config loads, listens on the container port,
        // and a gateway started with it serves the probes' paths.
        let cm = objs
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("aeris-gateway-config"))
            })
            .expect("gateway ConfigMap");
        let toml = cm["data"]["gateway.toml"].as_str().unwrap();
        assert!(
            toml.contains(&format!("listen = \"0.0.0.0:{container_port}\"")),
            "{toml}"
        );
        let config = dir.path().join(format!("{overlay}-gateway.toml"));
        std::fs::write(&config, toml).unwrap();
        let (ok, text) = run(Command::new(binary("aeris-gateway"))
            .arg("--config")
            .arg(&config)
            .arg("--print-config"));
        assert!(ok, "{overlay} gateway.toml: {text}");
        for path in [live, ready] {
            let (code, body) = get(cloud.gateway.api_port, path).unwrap();
            assert_eq!(code, 200, "{path}: {body}");
        }
    }

    // The validation can fail: an unknown field is refused.
    let bad = render("prod").replacen("  replicas: 3", "  replicas: 3\n  replicaz: 3", 1);
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    assert!(!validate(&file).0, "an unknown field passed validation");
}

#[test]
fn the_cluster_broker_uses_the_same_acl_and_the_image_runs_as_the_pods_user() {
    let acl = |p: &str| std::fs::read_to_string(deploy().join(p)).unwrap();
    assert_eq!(acl("k8s/base/broker/aeris.acl"), acl("mosquitto/aeris.acl"));
    let containerfile = acl("gateway.Containerfile");
    let deployment = acl("k8s/base/gateway/deployment.yaml");
    assert!(containerfile.contains("USER 10001:10001"));
    assert!(deployment.contains("runAsUser: 10001"));
    assert!(containerfile.contains("EXPOSE 8080"));
    assert!(deployment.contains("containerPort: 8080"));
    assert!(containerfile.contains("-p aeris-gateway"));
}
