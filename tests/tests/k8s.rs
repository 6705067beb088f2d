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

/// The ConfigMap generated from `prefix` (kustomize appends a hash).
fn config_map<'a>(objs: &'a [serde_json::Value], prefix: &str) -> &'a serde_json::Value {
    objs.iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no ConfigMap {prefix}-*"))
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
        let broker = find(&objs, "StatefulSet", "aeris-broker");
        if overlay == "prod" {
            check_broker_cluster(&objs, broker);
        } else {
            let image = broker["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap();
            assert!(image.starts_with("eclipse-mosquitto:"), "{image}");
        }
        // The gateway's broker.host is a Service on 1883 that selects the
        // broker's pods.
        let host = objs
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "aeris-broker")
            .expect("Service aeris-broker");
        assert_eq!(
            host["spec"]["selector"],
            broker["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(host["spec"]["ports"][0]["port"], 1883);
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
        let cm = config_map(&objs, "aeris-gateway-config");
        let toml = cm["data"]["gateway.toml"].as_str().unwrap();
        assert!(
            toml.contains(&format!("listen = \"0.0.0.0:{container_port}\"")),
            "{toml}"
        );
        assert!(toml.contains("host = \"aeris-broker\""), "{toml}");
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

/// The prod overlay's broker is a cluster that survives the loss of a
/// node: an odd number (at least 3) of EMQX nodes on different hosts, at
/// most one down by a drain, finding each other through the headless
/// Service's SRV records (node names built from the pods' DNS names), with
/// the cluster ports open between broker pods only, and the settings the
/// gateway relies on (docs/operations.md, "A clustered broker").
fn check_broker_cluster(objs: &[serde_json::Value], broker: &serde_json::Value) {
    let spec = &broker["spec"];
    let replicas = spec["replicas"].as_u64().unwrap();
    assert!(
        replicas >= 3 && replicas % 2 == 1,
        "{replicas} broker nodes"
    );
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(c["image"].as_str().unwrap().starts_with("emqx/emqx:5."));
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );
    let pdb = find(objs, "PodDisruptionBudget", "aeris-broker");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let headless = find(objs, "Service", spec["serviceName"].as_str().unwrap());
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let env = |name: &str| -> String {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))["value"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let service = headless["metadata"]["name"].as_str().unwrap();
    let domain = format!("{service}.$(POD_NAMESPACE).svc.cluster.local");
    assert_eq!(env("EMQX_CLUSTER__DNS__NAME"), domain);
    assert_eq!(env("EMQX_NODE__NAME"), format!("emqx@$(POD_NAME).{domain}"));
    let cookie = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "EMQX_NODE__COOKIE")
        .expect("EMQX_NODE__COOKIE");
    assert!(cookie["valueFrom"]["secretKeyRef"]["name"].is_string());

    // Cluster ports: from broker pods only.
    let np = find(objs, "NetworkPolicy", "aeris-broker");
    let rules = np["spec"]["ingress"].as_array().unwrap();
    for port in [4370u64, 5369] {
        let rule = rules
            .iter()
            .find(|r| {
                r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .unwrap_or_else(|| panic!("port {port} closed"));
        assert_eq!(
            rule["from"][0]["podSelector"]["matchLabels"], spec["selector"]["matchLabels"],
            "port {port}"
        );
        assert!(headless["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == port));
    }

    let cm = config_map(objs, "aeris-broker-config");
    let conf = cm["data"]["emqx.conf"].as_str().unwrap();
    for line in [
        "discovery_strategy = dns",
        "dns.record_type = srv",
        "autoheal = true",
        // Devices are their certificate's CN (the ACL's ${username}).
        "verify = verify_peer",
        "fail_if_no_peer_cert = true",
        "peer_cert_as_username = cn",
        "shared_subscription = true",
        "retain_available = true",
        // Retained statuses survive a restart of every node.
        "storage_type = disc",
        "max_packet_size = 32MB",
        "no_match = deny",
    ] {
        assert!(conf.contains(line), "emqx.conf lacks `{line}`");
    }
    assert_eq!(
        cm["data"]["acl.conf"].as_str().unwrap(),
        std::fs::read_to_string(deploy().join("k8s/base/broker-cluster/acl.conf")).unwrap()
    );
}

/// Does MQTT topic filter `filter` cover `topic` (which may itself be a
/// filter: a `+` or `#` in it is matched only by the same wildcard or a
/// wider one)?
fn covers(filter: &str, topic: &str) -> bool {
    let (mut f, mut t) = (filter.split('/'), topic.split('/'));
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) => {
                if level == "#" {
                    return false;
                }
            }
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Mosquitto's decision for `user` doing `action` ("publish" or
/// "subscribe") on `topic` under the rules of an aeris.acl file: `pattern`
/// lines for everyone (%u = user name), `topic` lines for the `user`
/// section they follow; a shared subscription is checked on its topic.
fn mosquitto_allows(acl: &str, user: &str, action: &str, topic: &str) -> bool {
    let topic = match topic.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map(|(_, t)| t).unwrap_or(""),
        None => topic,
    };
    let access = if action == "publish" { "write" } else { "read" };
    let mut section: Option<&str> = None;
    let mut allowed = false;
    for line in acl.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["user", name] => section = Some(name),
            ["pattern", acc, filter] => {
                let filter = filter.replace("%u", user);
                allowed |= (*acc == access || *acc == "readwrite") && covers(&filter, topic);
            }
            ["topic", acc, filter] if section == Some(user) => {
                allowed |= (*acc == access || *acc == "readwrite") && covers(filter, topic);
            }
            _ => {}
        }
    }
    allowed
}

/// EMQX's decision under an acl.conf of `{allow|deny, all | {username,
/// "u"}, publish|subscribe|all, ["filter", ...]}.` rules, first match
/// wins, no match denies (`authorization.no_match = deny`).
fn emqx_allows(acl: &str, user: &str, action: &str, topic: &str) -> bool {
    let text: String = acl
        .lines()
        .filter(|l| !l.trim_start().starts_with("%%"))
        .collect::<Vec<_>>()
        .join(" ");
    for rule in text.split("}.").map(str::trim).filter(|r| !r.is_empty()) {
        let rule = rule.trim_start_matches('{');
        let (permit, rest) = rule.split_once(',').expect("rule");
        let rest = rest.trim();
        if rest == "all" {
            return permit.trim() == "allow";
        }
        let (who, rest) = if let Some(r) = rest.strip_prefix("all,") {
            (None, r)
        } else {
            let r = rest.strip_prefix("{username, \"").expect("who");
            let (name, r) = r.split_once("\"}").expect("user name");
            (Some(name), r.trim_start_matches(','))
        };
        let (act, filters) = rest.trim().split_once(',').expect("action");
        let filters: Vec<String> = filters
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|f| f.trim().trim_matches('"').replace("${username}", user))
            .collect();
        let applies = who.is_none_or(|w| w == user)
            && (act.trim() == action || act.trim() == "all")
            && filters.iter().any(|f| covers(f, topic));
        if applies {
            return permit.trim() == "allow";
        }
    }
    false
}

#[test]
fn the_clustered_broker_authorizes_exactly_what_mosquitto_does() {
    let read = |p: &str| std::fs::read_to_string(deploy().join(p)).unwrap();
    let mosquitto = read("mosquitto/aeris.acl");
    let emqx = read("k8s/base/broker-cluster/acl.conf");
    let gw = "aeris-gateway";
    // (user, action, topic, expected)
    let cases = [
        ("dev-1", "publish", "aeris/v1/dev-1/up/batch", true),
        ("dev-1", "publish", "aeris/v1/dev-1/up/status", true),
        ("dev-1", "publish", "aeris/v1/dev-2/up/batch", false),
        ("dev-1", "publish", "aeris/v1/dev-1/down/ack", false),
        ("dev-1", "publish", "aeris/v1/+/up/batch", false),
        ("dev-1", "subscribe", "aeris/v1/dev-1/down/#", true),
        ("dev-1", "subscribe", "aeris/v1/dev-1/down/ack", true),
        ("dev-1", "subscribe", "aeris/v1/dev-2/down/ack", false),
        ("dev-1", "subscribe", "aeris/v1/+/down/ack", false),
        ("dev-1", "subscribe", "aeris/v1/+/up/#", false),
        ("dev-1", "subscribe", "$share/aeris/aeris/v1/+/up/#", false),
        ("dev-1", "subscribe", "#", false),
        (gw, "subscribe", "$share/aeris/aeris/v1/+/up/#", true),
        (gw, "subscribe", "$share/aeris/aeris/v1/+/up/batch", true),
        (gw, "subscribe", "aeris/v1/+/up/status", true),
        (gw, "subscribe", "aeris/v1/+/down/#", false),
        (gw, "subscribe", "#", false),
        (gw, "publish", "aeris/v1/dev-1/down/ack", true),
        (gw, "publish", "aeris/v1/dev-1/down/cmd", true),
        (gw, "publish", "aeris/v1/dev-1/up/batch", false),
        (
            "aeris-verify",
            "publish",
            "aeris/v1/aeris-verify/up/batch",
            true,
        ),
        (
            "aeris-verify",
            "subscribe",
            "aeris/v1/aeris-verify/down/ack",
            true,
        ),
        (
            "aeris-verify",
            "subscribe",
            "aeris/v1/dev-1/down/ack",
            false,
        ),
    ];
    for (user, action, topic, expected) in cases {
        assert_eq!(
            mosquitto_allows(&mosquitto, user, action, topic),
            expected,
            "Mosquitto: {user} {action} {topic}"
        );
        assert_eq!(
            emqx_allows(&emqx, user, action, topic),
            expected,
            "EMQX: {user} {action} {topic}"
        );
    }
    // The checker can fail: without its device rules EMQX denies a device
    // its own uplink.
    let without = emqx.replace("{allow, all, publish", "{deny, all, publish");
    assert!(!emqx_allows(
        &without,
        "dev-1",
        "publish",
        "aeris/v1/dev-1/up/batch"
    ));
}
