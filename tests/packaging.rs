//! Static checks of the deployment artefacts under `packaging/`.
//!
//! Nothing here runs Docker, Kubernetes or systemd: the files are parsed and
//! cross-checked against each other (the zkrender.toml embedded in each
//! ConfigMap against the pod spec that mounts it, the example config against
//! the systemd unit, ...). Every checker returns a list of problems naming the
//! file, so a failing assertion says what is wrong where; the `*_detects_*`
//! tests at the bottom mutate the real files and prove each check can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value as Yaml;

const IMAGE_REPO: &str = "ghcr.io/zkrender/zkrender";
const CONFIG_DIR: &str = "/etc/zkrender";
const CONFIG_PATH: &str = "/etc/zkrender/zkrender.toml";
const K8S_FILES: [&str; 3] =
    ["deployment-http-hook.yaml", "deployment-signal.yaml", "deployment-native-sidecar.yaml"];

// ---------------------------------------------------------------------------
// helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

fn assert_reports(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem containing {needle:?}, got: {problems:#?}"
    );
}

/// `text` with `from` replaced by `to`; panics if `from` is absent so that a
/// negative test cannot silently test the unmodified file.
fn mutate(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "mutation target {from:?} not found");
    text.replacen(from, to, 1)
}

fn yaml_str(v: &Yaml, key: &str) -> Option<String> {
    v.get(key).and_then(Yaml::as_str).map(str::to_owned)
}

fn yaml_seq<'a>(v: &'a Yaml, key: &str) -> &'a [Yaml] {
    v.get(key).and_then(Yaml::as_sequence).map(Vec::as_slice).unwrap_or(&[])
}

fn yaml_strings(v: &Yaml, key: &str) -> Option<Vec<String>> {
    v.get(key)?
        .as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap_or("<non-string>").to_owned()).collect())
}

fn toml_str<'a>(v: &'a toml::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(toml::Value::as_str)
}

/// The port of a `host:port` address or of an `http://host:port/...` URL.
fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let addr = addr.strip_prefix("http://").unwrap_or(addr);
    let authority = addr.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

// ---------------------------------------------------------------------------
// Kubernetes manifests

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Regular container.
    Main,
    /// Init container that runs to completion.
    Init,
    /// Init container with `restartPolicy: Always` (Kubernetes native sidecar).
    NativeSidecar,
}

struct Container<'a> {
    name: String,
    role: Role,
    spec: &'a Yaml,
}

impl Container<'_> {
    fn is_zkrender(&self) -> bool {
        self.name.contains("zkrender")
            || yaml_str(self.spec, "image").is_some_and(|i| i.starts_with(IMAGE_REPO))
    }

    /// Long-running zkrender (`run`), as opposed to the one-shot init.
    fn is_agent(&self) -> bool {
        self.is_zkrender() && self.role != Role::Init
    }

    fn mounts(&self) -> impl Iterator<Item = &Yaml> {
        yaml_seq(self.spec, "volumeMounts").iter()
    }

    fn mount_named(&self, volume: &str) -> Option<&Yaml> {
        self.mounts().find(|m| yaml_str(m, "name").as_deref() == Some(volume))
    }

    fn mount_at(&self, path: &str) -> Option<&Yaml> {
        self.mounts().find(|m| yaml_str(m, "mountPath").as_deref() == Some(path))
    }

    /// The mount whose directory contains `file` (longest match).
    fn mount_containing(&self, file: &str) -> Option<&Yaml> {
        self.mounts()
            .filter(|m| {
                yaml_str(m, "mountPath").is_some_and(|mp| {
                    let mp = mp.trim_end_matches('/');
                    file.strip_prefix(mp).is_some_and(|rest| rest.starts_with('/'))
                })
            })
            .max_by_key(|m| yaml_str(m, "mountPath").map_or(0, |s| s.len()))
    }

    /// Resolve a probe/containerPort reference (number or port name).
    fn resolve_port(&self, port: &Yaml) -> Option<u16> {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).ok();
        }
        let name = port.as_str()?;
        yaml_seq(self.spec, "ports")
            .iter()
            .find(|p| yaml_str(p, "name").as_deref() == Some(name))
            .and_then(|p| p.get("containerPort")?.as_u64())
            .and_then(|n| u16::try_from(n).ok())
    }

    fn container_ports(&self) -> Vec<u64> {
        yaml_seq(self.spec, "ports").iter().filter_map(|p| p.get("containerPort")?.as_u64()).collect()
    }

    /// `securityContext` field of the container, falling back to the pod's.
    fn effective<'b>(&'b self, pod: &'b Yaml, key: &str) -> Option<&'b Yaml> {
        self.spec
            .get("securityContext")
            .and_then(|s| s.get(key))
            .or_else(|| pod.get("securityContext").and_then(|s| s.get(key)))
    }
}

fn containers(pod: &Yaml) -> Vec<Container<'_>> {
    let mut out = Vec::new();
    for spec in yaml_seq(pod, "initContainers") {
        let role = if yaml_str(spec, "restartPolicy").as_deref() == Some("Always") {
            Role::NativeSidecar
        } else {
            Role::Init
        };
        out.push(Container { name: yaml_str(spec, "name").unwrap_or_default(), role, spec });
    }
    for spec in yaml_seq(pod, "containers") {
        out.push(Container { name: yaml_str(spec, "name").unwrap_or_default(), role: Role::Main, spec });
    }
    out
}

fn parse_yaml_docs(file: &str, text: &str) -> Result<Vec<Yaml>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Yaml::deserialize(doc).map_err(|e| format!("{file}: YAML document {i}: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Pod specs of the workloads in a file, with a label for messages.
fn pod_specs(docs: &[Yaml]) -> Vec<(String, &Yaml)> {
    docs.iter()
        .filter_map(|d| {
            let kind = yaml_str(d, "kind")?;
            let name = d.get("metadata").and_then(|m| yaml_str(m, "name")).unwrap_or_default();
            let pod = match kind.as_str() {
                "Pod" => d.get("spec")?,
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    d.get("spec")?.get("template")?.get("spec")?
                }
                _ => return None,
            };
            Some((format!("{kind}/{name}"), pod))
        })
        .collect()
}

/// The zkrender.toml a workload uses, with the files its ConfigMap volume
/// provides (paths relative to the mount point).
struct EmbeddedConfig {
    toml: toml::Value,
    /// Relative path in the volume -> ConfigMap key.
    files: BTreeMap<String, String>,
}

fn embedded_config(
    file: &str,
    label: &str,
    docs: &[Yaml],
    volumes: &BTreeMap<String, &Yaml>,
    agent: &Container,
    problems: &mut Vec<String>,
) -> Option<EmbeddedConfig> {
    let Some(mount) = agent.mount_at(CONFIG_DIR) else {
        problems.push(format!("{file}: {label}: container {} mounts nothing at {CONFIG_DIR}", agent.name));
        return None;
    };
    let vol_name = yaml_str(mount, "name").unwrap_or_default();
    let Some(cm_name) =
        volumes.get(&vol_name).and_then(|v| v.get("configMap")).and_then(|c| yaml_str(c, "name"))
    else {
        problems
            .push(format!("{file}: {label}: volume {vol_name:?} mounted at {CONFIG_DIR} is not a configMap"));
        return None;
    };
    let Some(cm) = docs.iter().find(|d| {
        yaml_str(d, "kind").as_deref() == Some("ConfigMap")
            && d.get("metadata").and_then(|m| yaml_str(m, "name")).as_deref() == Some(cm_name.as_str())
    }) else {
        problems.push(format!("{file}: {label}: ConfigMap {cm_name:?} is not defined in this file"));
        return None;
    };
    let data = cm.get("data").and_then(Yaml::as_mapping);
    let keys: BTreeSet<String> =
        data.map(|d| d.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect()).unwrap_or_default();
    let items = volumes[&vol_name].get("configMap").map(|c| yaml_seq(c, "items")).unwrap_or(&[]);
    let mut files = BTreeMap::new();
    if items.is_empty() {
        files.extend(keys.iter().map(|k| (k.clone(), k.clone())));
    } else {
        for item in items {
            let key = yaml_str(item, "key").unwrap_or_default();
            let path = yaml_str(item, "path").unwrap_or_default();
            if !keys.contains(&key) {
                problems.push(format!(
                    "{file}: {label}: volume {vol_name:?} maps key {key:?} absent from ConfigMap {cm_name:?}"
                ));
            }
            files.insert(path, key);
        }
    }
    let Some(key) = files.get("zkrender.toml") else {
        problems.push(format!(
            "{file}: {label}: ConfigMap {cm_name:?} provides no zkrender.toml at {CONFIG_DIR}"
        ));
        return None;
    };
    let text = data.and_then(|d| d.get(key.as_str())).and_then(Yaml::as_str).unwrap_or_default();
    match toml::from_str::<toml::Value>(text) {
        Ok(toml) => Some(EmbeddedConfig { toml, files }),
        Err(e) => {
            problems.push(format!(
                "{file}: {label}: zkrender.toml in ConfigMap {cm_name:?} is not valid TOML: {e}"
            ));
            None
        }
    }
}

fn check_probe(
    file: &str,
    label: &str,
    c: &Container,
    probe: &str,
    path: &str,
    port: Option<u16>,
    problems: &mut Vec<String>,
) {
    let Some(http) = c.spec.get(probe).and_then(|p| p.get("httpGet")) else {
        problems.push(format!("{file}: {label}: container {} has no {probe} with httpGet", c.name));
        return;
    };
    if yaml_str(http, "path").as_deref() != Some(path) {
        problems.push(format!(
            "{file}: {label}: {} {probe} path is {:?}, expected {path}",
            c.name,
            yaml_str(http, "path")
        ));
    }
    let probe_port = http.get("port").and_then(|p| c.resolve_port(p));
    if probe_port.is_none() || probe_port != port {
        problems.push(format!(
            "{file}: {label}: {} {probe} port {probe_port:?} does not match the port of `listen` in zkrender.toml ({port:?})",
            c.name
        ));
    }
}

fn check_k8s_file(file: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let docs = match parse_yaml_docs(file, text) {
        Ok(d) => d,
        Err(e) => return vec![e],
    };
    let pods = pod_specs(&docs);
    if pods.is_empty() {
        problems.push(format!("{file}: no workload (Deployment, Pod, ...) found"));
    }
    for (label, pod) in pods {
        let label = label.as_str();
        let mut volumes = BTreeMap::new();
        for v in yaml_seq(pod, "volumes") {
            let name = yaml_str(v, "name").unwrap_or_default();
            if volumes.insert(name.clone(), v).is_some() {
                problems.push(format!("{file}: {label}: volume {name:?} defined twice"));
            }
        }
        let all = containers(pod);

        // Every volumeMount refers to a defined volume.
        for c in &all {
            for m in c.mounts() {
                let name = yaml_str(m, "name").unwrap_or_default();
                if !volumes.contains_key(&name) {
                    problems.push(format!(
                        "{file}: {label}: container {} mounts undefined volume {name:?}",
                        c.name
                    ));
                }
            }
        }

        // zkrender containers: image, command, args, hardening.
        for c in all.iter().filter(|c| c.is_zkrender()) {
            let image = yaml_str(c.spec, "image").unwrap_or_default();
            let expected = format!("{IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION"));
            if image != expected {
                problems.push(format!("{file}: {label}: container {} image is {image:?}, expected {expected:?} (the crate version)", c.name));
            }
            if let Some(cmd) = yaml_strings(c.spec, "command")
                && cmd != ["zkrender"]
            {
                problems
                    .push(format!("{file}: {label}: container {} overrides command with {cmd:?}", c.name));
            }
            let args = yaml_strings(c.spec, "args").unwrap_or_default();
            let sub = if c.role == Role::Init { "once" } else { "run" };
            if args.len() < 3 || args[..3] != [sub, "-c", CONFIG_PATH] {
                problems.push(format!(
                    "{file}: {label}: container {} ({:?}) args {args:?} must start with [{sub:?}, \"-c\", {CONFIG_PATH:?}]",
                    c.name, c.role
                ));
            }
            let sc = |key: &str| c.effective(pod, key);
            if sc("runAsNonRoot").and_then(Yaml::as_bool) != Some(true) {
                problems.push(format!("{file}: {label}: container {} is not runAsNonRoot", c.name));
            }
            if sc("readOnlyRootFilesystem").and_then(Yaml::as_bool) != Some(true) {
                problems.push(format!(
                    "{file}: {label}: container {} lacks readOnlyRootFilesystem: true",
                    c.name
                ));
            }
            if sc("allowPrivilegeEscalation").and_then(Yaml::as_bool) != Some(false) {
                problems.push(format!(
                    "{file}: {label}: container {} lacks allowPrivilegeEscalation: false",
                    c.name
                ));
            }
            let drops_all = sc("capabilities")
                .map(|caps| yaml_seq(caps, "drop").iter().any(|d| d.as_str() == Some("ALL")))
                .unwrap_or(false);
            if !drops_all {
                problems
                    .push(format!("{file}: {label}: container {} does not drop ALL capabilities", c.name));
            }
            let res = c.spec.get("resources");
            for (section, key) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
                if res.and_then(|r| r.get(section)).and_then(|s| s.get(key)).is_none() {
                    problems.push(format!(
                        "{file}: {label}: container {} has no resources.{section}.{key}",
                        c.name
                    ));
                }
            }
        }

        let agents: Vec<&Container> = all.iter().filter(|c| c.is_agent()).collect();
        let [agent] = agents.as_slice() else {
            problems.push(format!(
                "{file}: {label}: expected exactly one long-running zkrender container, found {}",
                agents.len()
            ));
            continue;
        };
        let Some(config) = embedded_config(file, label, &docs, &volumes, agent, &mut problems) else {
            continue;
        };

        // HTTP endpoint: reachable by kubelet, and probed on its port.
        let listen = config.toml.get("agent").and_then(|a| toml_str(a, "listen"));
        let port = match listen.map(split_host_port) {
            None => {
                problems.push(format!(
                    "{file}: {label}: zkrender.toml has no [agent] listen (needed for the probes)"
                ));
                None
            }
            Some(None) => {
                problems.push(format!("{file}: {label}: zkrender.toml listen {listen:?} is not host:port"));
                None
            }
            Some(Some((host, port))) => {
                if is_loopback(&host) {
                    problems.push(format!(
                        "{file}: {label}: zkrender.toml listen {listen:?} is loopback; kubelet probes cannot reach it"
                    ));
                }
                Some(port)
            }
        };
        check_probe(file, label, agent, "readinessProbe", "/readyz", port, &mut problems);
        check_probe(file, label, agent, "livenessProbe", "/healthz", port, &mut problems);
        if agent.role == Role::NativeSidecar || agent.spec.get("startupProbe").is_some() {
            check_probe(file, label, agent, "startupProbe", "/readyz", port, &mut problems);
        }
        if let Some(port) = port
            && !agent.container_ports().contains(&u64::from(port))
        {
            problems.push(format!(
                "{file}: {label}: container {} does not declare containerPort {port}",
                agent.name
            ));
        }

        // Rendered files: a writable emptyDir directory shared with the app.
        let apps: Vec<&Container> = all.iter().filter(|c| !c.is_zkrender() && c.role == Role::Main).collect();
        if apps.is_empty() {
            problems.push(format!("{file}: {label}: no application container next to zkrender"));
        }
        let files = config.toml.get("file").and_then(toml::Value::as_array).cloned().unwrap_or_default();
        if files.is_empty() {
            problems.push(format!("{file}: {label}: zkrender.toml has no [[file]]"));
        }
        let mut rendered = BTreeSet::new();
        for f in &files {
            let Some(dest) = toml_str(f, "dest") else {
                problems.push(format!("{file}: {label}: a [[file]] in zkrender.toml has no dest"));
                continue;
            };
            let Some(mount) = agent.mount_containing(dest) else {
                problems.push(format!(
                    "{file}: {label}: dest {dest} is on {}'s read-only root filesystem (no volume mounted above it)",
                    agent.name
                ));
                continue;
            };
            let vol = yaml_str(mount, "name").unwrap_or_default();
            let mount_path = yaml_str(mount, "mountPath").unwrap_or_default();
            if volumes.get(&vol).and_then(|v| v.get("emptyDir")).is_none() {
                problems.push(format!(
                    "{file}: {label}: dest {dest} is on volume {vol:?}, which is not an emptyDir"
                ));
            }
            if mount.get("readOnly").and_then(Yaml::as_bool) == Some(true) {
                problems
                    .push(format!("{file}: {label}: {} mounts {vol:?} (for {dest}) read-only", agent.name));
            }
            for other in all.iter().filter(|c| !c.is_agent() && (c.is_zkrender() || c.role == Role::Main)) {
                match other.mount_named(&vol) {
                    None => problems.push(format!(
                        "{file}: {label}: container {} does not mount the rendered-config volume {vol:?}",
                        other.name
                    )),
                    Some(m) if yaml_str(m, "mountPath").as_deref() != Some(mount_path.as_str()) => {
                        problems.push(format!(
                            "{file}: {label}: container {} mounts {vol:?} at {:?}, zkrender at {mount_path:?}: {dest} differs",
                            other.name,
                            yaml_str(m, "mountPath")
                        ))
                    }
                    Some(_) => {}
                }
            }
            rendered.insert(vol);

            if let Some(template) = toml_str(f, "template") {
                if template.starts_with('/') {
                    problems.push(format!(
                        "{file}: {label}: template {template} should be relative to {CONFIG_DIR}"
                    ));
                } else if !config.files.contains_key(template) {
                    problems.push(format!(
                        "{file}: {label}: template {template} is not provided by the ConfigMap volume (has {:?})",
                        config.files.keys().collect::<Vec<_>>()
                    ));
                }
            }

            if let Some(reload) = f.get("reload") {
                if toml_str(reload, "process").is_some() || toml_str(reload, "signal").is_some() {
                    if pod.get("shareProcessNamespace").and_then(Yaml::as_bool) != Some(true) {
                        problems.push(format!(
                            "{file}: {label}: {dest} reloads by signal but shareProcessNamespace is not true"
                        ));
                    }
                    let uid = agent.effective(pod, "runAsUser").and_then(Yaml::as_u64);
                    for app in &apps {
                        let app_uid = app.effective(pod, "runAsUser").and_then(Yaml::as_u64);
                        if uid.is_none() || uid != app_uid {
                            problems.push(format!(
                                "{file}: {label}: signalling {} needs the same runAsUser as zkrender ({app_uid:?} vs {uid:?})",
                                app.name
                            ));
                        }
                    }
                }
                if let Some(url) = toml_str(reload, "http") {
                    match split_host_port(url) {
                        Some((host, port)) if is_loopback(&host) => {
                            if !apps.iter().any(|a| a.container_ports().contains(&u64::from(port))) {
                                problems.push(format!(
                                    "{file}: {label}: reload URL {url} targets port {port}, which no app container declares"
                                ));
                            }
                        }
                        _ => problems.push(format!(
                            "{file}: {label}: reload URL {url} should target the app on localhost with an explicit port"
                        )),
                    }
                }
            }
        }

        // No subPath on the rendered volume anywhere: atomic renames would be
        // invisible through a single-file bind mount.
        for c in &all {
            for m in c.mounts() {
                let name = yaml_str(m, "name").unwrap_or_default();
                if rendered.contains(&name) && (m.get("subPath").is_some() || m.get("subPathExpr").is_some())
                {
                    problems.push(format!(
                        "{file}: {label}: container {} mounts rendered-config volume {name:?} with subPath",
                        c.name
                    ));
                }
            }
        }
    }
    problems
}

fn k8s(file: &str) -> (String, String) {
    (file.to_owned(), read(&format!("packaging/kubernetes/{file}")))
}

fn agent_of(text: &str) -> (Role, Yaml, Yaml) {
    let docs = parse_yaml_docs("", text).unwrap();
    let (_, pod) = pod_specs(&docs).into_iter().next().expect("a workload");
    let all = containers(pod);
    let agent = all.iter().find(|c| c.is_agent()).expect("a zkrender agent container");
    let toml = docs
        .iter()
        .find(|d| yaml_str(d, "kind").as_deref() == Some("ConfigMap"))
        .and_then(|cm| cm.get("data")?.get("zkrender.toml")?.as_str().map(str::to_owned))
        .expect("a ConfigMap with zkrender.toml");
    let toml: toml::Value = toml::from_str(&toml).unwrap();
    let reload =
        toml.get("file").and_then(|f| f.as_array()).and_then(|a| a.iter().find_map(|f| f.get("reload")));
    let reload = serde_norway::to_value(reload).unwrap();
    (agent.role, pod.clone(), reload)
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let dir = root().join("packaging/kubernetes");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    found.sort();
    for expected in K8S_FILES {
        assert!(
            found.iter().any(|f| f == expected),
            "packaging/kubernetes/{expected} is missing (found {found:?})"
        );
    }
    for name in &found {
        let (file, text) = k8s(name);
        assert_no_problems(&format!("packaging/kubernetes/{file}"), &check_k8s_file(&file, &text));
    }
}

#[test]
fn http_hook_variant_uses_an_init_container_and_an_http_reload() {
    let (file, text) = k8s("deployment-http-hook.yaml");
    let (role, pod, reload) = agent_of(&text);
    assert_eq!(role, Role::Main, "{file}: zkrender should be a regular sidecar container");
    let all = containers(&pod);
    assert!(
        all.iter().any(|c| c.is_zkrender() && c.role == Role::Init),
        "{file}: no `zkrender once` init container"
    );
    assert!(reload.get("http").is_some(), "{file}: reload is not an http hook: {reload:?}");
}

#[test]
fn signal_variant_shares_the_process_namespace_and_hups_nginx() {
    let (file, text) = k8s("deployment-signal.yaml");
    let (_, pod, reload) = agent_of(&text);
    assert_eq!(
        pod.get("shareProcessNamespace").and_then(Yaml::as_bool),
        Some(true),
        "{file}: shareProcessNamespace"
    );
    assert_eq!(yaml_str(&reload, "signal").as_deref(), Some("HUP"), "{file}: reload signal");
    assert_eq!(yaml_str(&reload, "process").as_deref(), Some("nginx"), "{file}: reload process");
    let all = containers(&pod);
    assert!(
        all.iter().any(|c| c.is_zkrender() && c.role == Role::Init),
        "{file}: no `zkrender once` init container"
    );
}

#[test]
fn native_sidecar_variant_runs_zkrender_as_restartable_init_container() {
    let (file, text) = k8s("deployment-native-sidecar.yaml");
    let (role, pod, _) = agent_of(&text);
    assert_eq!(
        role,
        Role::NativeSidecar,
        "{file}: zkrender must be an initContainer with restartPolicy: Always"
    );
    let all = containers(&pod);
    assert!(
        !all.iter().any(|c| c.is_zkrender() && c.role == Role::Main),
        "{file}: zkrender must not also be a regular container"
    );
}

// ---------------------------------------------------------------------------
// Dockerfile

struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(cont) = trimmed.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        out.push(Instruction { stage, keyword, args: args.split_whitespace().collect::<Vec<_>>().join(" ") });
    }
    out
}

fn check_dockerfile(text: &str) -> Vec<String> {
    const F: &str = "packaging/Dockerfile";
    let mut problems = Vec::new();
    let ins = dockerfile_instructions(text);
    let last = ins.iter().map(|i| i.stage).max().unwrap_or(0);
    if last < 2 {
        problems.push(format!("{F}: expected a multi-stage build, found {last} stage(s)"));
    }
    let in_stage = |stage: usize, kw: &str| -> Vec<&Instruction> {
        ins.iter().filter(|i| i.stage == stage && i.keyword == kw).collect()
    };

    // Builder: the exact CI build command.
    let builder =
        ins.iter().find(|i| i.keyword == "FROM" && i.args.to_ascii_lowercase().contains(" as builder"));
    match builder {
        None => problems.push(format!("{F}: no `FROM ... AS builder` stage")),
        Some(b) => {
            if !b.args.starts_with("rust:") {
                problems.push(format!("{F}: builder stage is `FROM {}`, expected a rust: image", b.args));
            }
            let runs = in_stage(b.stage, "RUN");
            if !runs.iter().any(|r| r.args.contains("cargo build --release --locked")) {
                problems.push(format!("{F}: the builder never runs `cargo build --release --locked`"));
            }
        }
    }
    // Everything the build reads besides src/ is copied in before the first build: the
    // patched crates of [patch.crates-io], build.rs and the function order it links.
    let first_build = ins.iter().position(|i| i.keyword == "RUN" && i.args.contains("cargo build"));
    let copied: Vec<&str> = ins[..first_build.unwrap_or(ins.len())]
        .iter()
        .filter(|i| i.keyword == "COPY" && !i.args.contains("--from"))
        .flat_map(|i| {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    for needed in build_inputs() {
        if !copied.iter().any(|c| c.trim_end_matches('/') == needed) {
            problems.push(format!(
                "{F}: `{needed}` is not copied into the builder before its first `cargo build`"
            ));
        }
    }
    for r in ins.iter().filter(|i| i.keyword == "RUN" && i.args.contains("cargo build")) {
        if !r.args.contains("cargo build --release --locked") {
            problems.push(format!("{F}: `{}` differs from CI's `cargo build --release --locked`", r.args));
        }
    }

    // Runtime stage.
    let json = |kw: &str| -> Option<Vec<String>> {
        in_stage(last, kw).last().and_then(|i| serde_json::from_str(&i.args).ok())
    };
    if json("ENTRYPOINT") != Some(vec!["zkrender".to_owned()]) {
        problems.push(format!("{F}: final stage ENTRYPOINT is not [\"zkrender\"] (exec form)"));
    }
    if json("CMD").as_deref() != Some(&["run".to_owned(), "-c".to_owned(), CONFIG_PATH.to_owned()][..]) {
        problems.push(format!("{F}: final stage CMD is not [\"run\", \"-c\", \"{CONFIG_PATH}\"]"));
    }
    match in_stage(last, "USER").last() {
        None => problems.push(format!("{F}: final stage has no USER (would run as root)")),
        Some(u) => {
            let user = u.args.split(':').next().unwrap_or_default();
            match user.parse::<u32>() {
                Ok(0) => problems.push(format!("{F}: final stage USER {} is root", u.args)),
                Ok(_) => {}
                Err(_) => problems.push(format!(
                    "{F}: final stage USER {} is not numeric (runAsNonRoot cannot verify a name)",
                    u.args
                )),
            }
        }
    }
    if !in_stage(last, "COPY")
        .iter()
        .any(|c| c.args.contains("--from=builder") && c.args.contains("zkrender"))
    {
        problems.push(format!("{F}: final stage does not COPY --from=builder the zkrender binary"));
    }
    if let Some(h) = in_stage(last, "HEALTHCHECK").last()
        && !h.args.contains("/healthz")
    {
        problems.push(format!("{F}: HEALTHCHECK does not query /healthz: {}", h.args));
    }
    problems
}

/// What a release build reads besides `src/`, `Cargo.toml` and `Cargo.lock`: the top-level
/// directory of each `[patch.crates-io]` path, `build.rs` and `build/`.
fn build_inputs() -> Vec<String> {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    let mut inputs = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let patches = manifest.get("patch").and_then(|p| p.get("crates-io")).and_then(|p| p.as_table());
    for patch in patches.into_iter().flat_map(|t| t.values()) {
        if let Some(path) = patch.get("path").and_then(|p| p.as_str()) {
            let top = path.trim_start_matches("./").split('/').next().unwrap_or(path).to_owned();
            if !inputs.contains(&top) {
                inputs.push(top);
            }
        }
    }
    for extra in ["build.rs", "build"] {
        if Path::new(env!("CARGO_MANIFEST_DIR")).join(extra).exists() {
            inputs.push(extra.to_owned());
        }
    }
    inputs
}

#[test]
fn dockerfile_builds_like_ci_and_runs_unprivileged() {
    assert_no_problems("packaging/Dockerfile", &check_dockerfile(&read("packaging/Dockerfile")));
}

// ---------------------------------------------------------------------------
// systemd unit and example config

fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn check_systemd_unit(text: &str, example_config: &str) -> Vec<String> {
    const F: &str = "packaging/systemd/zkrender.service";
    let mut problems = Vec::new();
    let entries = unit_entries(text);
    let service = |key: &str| -> Vec<&str> {
        entries.iter().filter(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str()).collect()
    };
    let expect = |problems: &mut Vec<String>, key: &str, value: &str| {
        if service(key).last() != Some(&value) {
            problems.push(format!("{F}: [Service] {key}={value} expected, found {:?}", service(key)));
        }
    };
    expect(&mut problems, "Type", "notify");
    expect(&mut problems, "ProtectSystem", "strict");
    expect(&mut problems, "NoNewPrivileges", "yes");
    expect(&mut problems, "Restart", "on-failure");
    if !service("ExecStart").iter().any(|v| *v == format!("/usr/bin/zkrender run -c {CONFIG_PATH}")) {
        problems.push(format!("{F}: ExecStart is not `/usr/bin/zkrender run -c {CONFIG_PATH}`"));
    }
    if !service("ExecReload").iter().any(|v| v.contains("-HUP") && v.contains("$MAINPID")) {
        problems.push(format!("{F}: ExecReload does not send -HUP to $MAINPID: {:?}", service("ExecReload")));
    }
    if service("ProtectProc").contains(&"invisible") {
        problems.push(format!("{F}: ProtectProc=invisible hides the processes reload.process must find"));
    }
    if service("User").last().is_none() {
        problems.push(format!("{F}: no User= (runs as root)"));
    }
    if !entries.iter().any(|(s, k, _)| s == "Install" && k == "WantedBy") {
        problems.push(format!("{F}: no [Install] WantedBy="));
    }
    // Every destination of the example config must be writable.
    let rw: Vec<&str> = service("ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches(['-', '+']))
        .collect();
    let config: toml::Value = match toml::from_str(example_config) {
        Ok(c) => c,
        Err(e) => return vec![format!("packaging/zkrender.toml is not valid TOML: {e}")],
    };
    for f in config.get("file").and_then(toml::Value::as_array).into_iter().flatten() {
        let dest = toml_str(f, "dest").unwrap_or_default();
        let covered = rw.iter().any(|p| {
            let p = p.trim_end_matches('/');
            dest.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
        });
        if !covered {
            problems.push(format!(
                "{F}: ReadWritePaths={rw:?} does not cover {dest} (a dest of packaging/zkrender.toml)"
            ));
        }
    }
    problems
}

#[test]
fn systemd_unit_is_notify_hardened_and_covers_example_destinations() {
    let problems =
        check_systemd_unit(&read("packaging/systemd/zkrender.service"), &read("packaging/zkrender.toml"));
    assert_no_problems("packaging/systemd/zkrender.service", &problems);
}

fn check_example_config(text: &str, dir: &Path) -> Vec<String> {
    const F: &str = "packaging/zkrender.toml";
    let config: toml::Value = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => return vec![format!("{F}: not valid TOML: {e}")],
    };
    let mut problems = Vec::new();
    if config.get("zookeeper").and_then(|z| toml_str(z, "hosts")).is_none() {
        problems.push(format!("{F}: no [zookeeper] hosts"));
    }
    if config.get("agent").and_then(|a| a.get("listen")).is_some() {
        problems.push(format!("{F}: [agent] listen must stay commented out in the packaged example"));
    }
    let files = config.get("file").and_then(toml::Value::as_array).cloned().unwrap_or_default();
    if files.is_empty() {
        problems.push(format!("{F}: no [[file]] entries"));
    }
    for (i, f) in files.iter().enumerate() {
        let dest = toml_str(f, "dest").unwrap_or_default();
        if !dest.starts_with('/') {
            problems.push(format!("{F}: file #{i} dest {dest:?} is not absolute"));
        }
        match (toml_str(f, "znode"), toml_str(f, "template")) {
            (Some(_), None) => {}
            (None, Some(t)) => {
                if !dir.join(t).is_file() {
                    problems.push(format!("{F}: file #{i} template {t} does not exist next to the config"));
                }
            }
            _ => problems.push(format!("{F}: file #{i} ({dest}) needs exactly one of znode/template")),
        }
    }
    problems
}

#[test]
fn example_config_is_self_contained() {
    let problems = check_example_config(&read("packaging/zkrender.toml"), &root().join("packaging"));
    assert_no_problems("packaging/zkrender.toml", &problems);
}

// ---------------------------------------------------------------------------
// cargo-deb metadata

fn check_deb_metadata(cargo_toml: &str, root: &Path) -> Vec<String> {
    const F: &str = "Cargo.toml [package.metadata.deb]";
    let cargo: toml::Value = match toml::from_str(cargo_toml) {
        Ok(c) => c,
        Err(e) => return vec![format!("Cargo.toml: not valid TOML: {e}")],
    };
    let Some(deb) = cargo.get("package").and_then(|p| p.get("metadata")).and_then(|m| m.get("deb")) else {
        return vec![format!("{F}: missing")];
    };
    let mut problems = Vec::new();
    let assets: Vec<(String, String)> = deb
        .get("assets")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let a = a.as_array()?;
            Some((a.first()?.as_str()?.to_owned(), a.get(1)?.as_str()?.to_owned()))
        })
        .collect();
    for (src, dest) in [
        ("target/release/zkrender", "usr/bin/"),
        ("packaging/zkrender.toml", "etc/zkrender/zkrender.toml"),
        ("packaging/templates/app.conf.j2", "etc/zkrender/templates/"),
    ] {
        if !assets.iter().any(|(s, d)| s == src && d == dest) {
            problems.push(format!("{F}: no asset {src} -> {dest}"));
        }
    }
    for (src, _) in assets.iter().filter(|(s, _)| s.starts_with("packaging/")) {
        if !root.join(src).is_file() {
            problems.push(format!("{F}: asset {src} does not exist"));
        }
    }
    if assets.iter().any(|(_, d)| d.contains("systemd/system")) {
        problems.push(format!("{F}: the unit is an asset too; systemd-units already installs it"));
    }
    let conf_files: Vec<&str> = deb
        .get("conf-files")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    if !conf_files.contains(&CONFIG_PATH) {
        problems.push(format!("{F}: conf-files does not list {CONFIG_PATH}"));
    }
    match deb.get("systemd-units") {
        None => problems.push(format!("{F}: no systemd-units table")),
        Some(units) => {
            for key in ["enable", "start"] {
                if units.get(key).and_then(toml::Value::as_bool) != Some(false) {
                    problems.push(format!("{F}: systemd-units.{key} must be false (installed, not started)"));
                }
            }
            let dir = toml_str(units, "unit-scripts").unwrap_or_default();
            if !root.join(dir).join("zkrender.service").is_file() {
                problems.push(format!("{F}: systemd-units.unit-scripts {dir:?} holds no zkrender.service"));
            }
        }
    }
    match toml_str(deb, "maintainer-scripts") {
        None => problems.push(format!("{F}: no maintainer-scripts (systemd-units needs it)")),
        Some(dir) => {
            for script in ["preinst", "postinst", "prerm", "postrm"] {
                let path = root.join(dir).join(script);
                if let Ok(text) = std::fs::read_to_string(&path)
                    && !text.contains("#DEBHELPER#")
                {
                    problems.push(format!("{F}: {} lacks the #DEBHELPER# token", path.display()));
                }
            }
        }
    }
    problems
}

#[test]
fn deb_metadata_installs_the_packaging_files() {
    assert_no_problems("Cargo.toml", &check_deb_metadata(&read("Cargo.toml"), &root()));
}

// ---------------------------------------------------------------------------
// The checks can fail: mutate the real files and expect a precise report.

#[test]
fn k8s_check_detects_broken_manifests() {
    let (file, text) = k8s("deployment-http-hook.yaml");
    let cases = [
        // wrong image for a zkrender container
        (
            "image: ghcr.io/zkrender/zkrender:0.1.0\n          args: [\"run\"",
            "image: zkrender:latest\n          args: [\"run\"",
            "image is \"zkrender:latest\"",
        ),
        // sidecar running `once`
        ("args: [\"run\", \"-c\"", "args: [\"once\", \"-c\"", "must start with [\"run\""),
        // init container running `run`
        ("args: [\"once\", \"-c\"", "args: [\"run\", \"-c\"", "must start with [\"once\""),
        // mount of an undefined volume
        (
            "            - name: rendered\n              mountPath: /etc/app\n              readOnly: true",
            "            - name: scratch\n              mountPath: /etc/app\n              readOnly: true",
            "mounts undefined volume \"scratch\"",
        ),
        // single-file subPath mount in the app
        (
            "              mountPath: /etc/app\n              readOnly: true",
            "              mountPath: /etc/app/app.conf\n              subPath: app.conf\n              readOnly: true",
            "with subPath",
        ),
        // the app does not mount the rendered volume
        (
            "            - name: rendered\n              mountPath: /etc/app\n              readOnly: true",
            "            - name: zkrender-tmp\n              mountPath: /etc/app\n              readOnly: true",
            "container app does not mount the rendered-config volume",
        ),
        // probe port differs from listen
        (
            "              path: /readyz\n              port: 9102",
            "              path: /readyz\n              port: 9103",
            "readinessProbe port Some(9103)",
        ),
        // listen on loopback
        ("listen = \"0.0.0.0:9102\"", "listen = \"127.0.0.1:9102\"", "is loopback"),
        // listen port changed but probes not
        ("listen = \"0.0.0.0:9102\"", "listen = \"0.0.0.0:9200\"", "livenessProbe port Some(9102)"),
        // rendered-config volume is not an emptyDir
        (
            "        - name: rendered\n          emptyDir:",
            "        - name: rendered\n          hostPath:\n            path: /srv\n          x:",
            "not an emptyDir",
        ),
        // template not shipped in the ConfigMap volume
        (
            "path: templates/app.conf.j2",
            "path: app.conf.j2",
            "template templates/app.conf.j2 is not provided",
        ),
        // reload URL targets a port the app does not expose
        (
            "http = \"http://127.0.0.1:8080/-/reload\"",
            "http = \"http://127.0.0.1:8081/-/reload\"",
            "targets port 8081",
        ),
        // hardening removed
        (
            "            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            capabilities:\n              drop: [\"ALL\"]\n      volumes:",
            "            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: false\n            capabilities:\n              drop: [\"ALL\"]\n      volumes:",
            "container zkrender lacks readOnlyRootFilesystem",
        ),
    ];
    for (from, to, needle) in cases {
        let problems = check_k8s_file(&file, &mutate(&text, from, to));
        assert_reports(&problems, needle);
        assert!(problems.iter().all(|p| p.starts_with(&file)), "messages must name the file: {problems:#?}");
    }

    let (file, text) = k8s("deployment-signal.yaml");
    assert_reports(
        &check_k8s_file(
            &file,
            &mutate(&text, "      shareProcessNamespace: true\n", "      shareProcessNamespace: false\n"),
        ),
        "shareProcessNamespace is not true",
    );
    assert_reports(
        &check_k8s_file(
            &file,
            &mutate(
                &text,
                "            readOnlyRootFilesystem: true\n            capabilities:\n              drop: [\"ALL\"]\n        - name: zkrender",
                "            readOnlyRootFilesystem: true\n            runAsUser: 102\n            capabilities:\n              drop: [\"ALL\"]\n        - name: zkrender",
            ),
        ),
        "signalling nginx needs the same runAsUser",
    );

    let (file, text) = k8s("deployment-native-sidecar.yaml");
    let broken = mutate(&text, "          restartPolicy: Always\n", "");
    assert_reports(&check_k8s_file(&file, &broken), "exactly one long-running zkrender container, found 0");
    assert_reports(
        &check_k8s_file(
            &file,
            &mutate(
                &text,
                "          startupProbe:\n            httpGet:\n              path: /readyz",
                "          startupProbe:\n            httpGet:\n              path: /healthz",
            ),
        ),
        "startupProbe path",
    );
}

#[test]
fn dockerfile_check_detects_problems() {
    let text = read("packaging/Dockerfile");
    let cases = [
        ("ENTRYPOINT [\"zkrender\"]", "ENTRYPOINT [\"/bin/sh\"]", "ENTRYPOINT is not"),
        ("USER 65532:65532", "USER 0", "is root"),
        ("USER 65532:65532", "USER nobody", "not numeric"),
        ("USER 65532:65532", "", "no USER"),
        (
            " && cargo build --release --locked \\\n && install",
            " && cargo build --release \\\n && install",
            "differs from CI",
        ),
        ("CMD [\"run\", \"-c\", \"/etc/zkrender/zkrender.toml\"]", "CMD [\"run\"]", "CMD is not"),
        ("FROM rust:1-bookworm AS builder", "FROM rust:1-bookworm AS build", "no `FROM ... AS builder`"),
        ("COPY vendor ./vendor\n", "", "`vendor` is not copied"),
        (
            "COPY Cargo.toml Cargo.lock build.rs ./",
            "COPY Cargo.toml Cargo.lock ./",
            "`build.rs` is not copied",
        ),
    ];
    for (from, to, needle) in cases {
        assert_reports(&check_dockerfile(&mutate(&text, from, to)), needle);
    }
}

#[test]
fn systemd_check_detects_problems() {
    let unit = read("packaging/systemd/zkrender.service");
    let config = read("packaging/zkrender.toml");
    let cases = [
        ("Type=notify", "Type=simple", "Type=notify expected"),
        ("ProtectSystem=strict", "ProtectSystem=full", "ProtectSystem=strict expected"),
        ("NoNewPrivileges=yes", "NoNewPrivileges=no", "NoNewPrivileges=yes expected"),
        (
            "ExecReload=/bin/kill -HUP $MAINPID",
            "ExecReload=/bin/kill -USR1 $MAINPID",
            "ExecReload does not send -HUP",
        ),
        ("ReadWritePaths=/etc/app", "ReadWritePaths=/etc/other", "does not cover /etc/app/app.conf"),
        ("ProtectHome=yes", "ProtectHome=yes\nProtectProc=invisible", "ProtectProc=invisible"),
    ];
    for (from, to, needle) in cases {
        assert_reports(&check_systemd_unit(&mutate(&unit, from, to), &config), needle);
    }
    let config = mutate(&config, "dest = \"/etc/app/flags.json\"", "dest = \"/srv/flags.json\"");
    assert_reports(&check_systemd_unit(&unit, &config), "does not cover /srv/flags.json");
}

#[test]
fn example_config_and_deb_checks_detect_problems() {
    let dir = root().join("packaging");
    let config = read("packaging/zkrender.toml");
    assert_reports(
        &check_example_config(&mutate(&config, "# listen = ", "listen = "), &dir),
        "listen must stay commented out",
    );
    assert_reports(
        &check_example_config(
            &mutate(&config, "template = \"templates/app.conf.j2\"", "template = \"templates/missing.j2\""),
            &dir,
        ),
        "templates/missing.j2 does not exist",
    );

    let cargo = read("Cargo.toml");
    let cases = [
        ("enable = false", "enable = true", "systemd-units.enable must be false"),
        ("start = false", "start = true", "systemd-units.start must be false"),
        (
            "[\"packaging/zkrender.toml\", \"etc/zkrender/zkrender.toml\"",
            "[\"packaging/zk.toml\", \"etc/zkrender/zkrender.toml\"",
            "no asset packaging/zkrender.toml",
        ),
        ("conf-files = [\"/etc/zkrender/zkrender.toml\", ", "conf-files = [", "conf-files does not list"),
        (
            "unit-scripts = \"packaging/systemd/\"",
            "unit-scripts = \"packaging/\"",
            "holds no zkrender.service",
        ),
    ];
    for (from, to, needle) in cases {
        assert_reports(&check_deb_metadata(&mutate(&cargo, from, to), &root()), needle);
    }
}
