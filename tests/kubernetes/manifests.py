"""What the Kubernetes schemas cannot see in deploy/kubernetes, read from `kubectl kustomize`'s
output (tests/kubernetes/run calls it):

  manifests.py check RENDERED.yaml            the invariants below; exit 1 naming each broken one
  manifests.py pod-tree RENDERED.yaml ROOT    lay out Portcullis's config and placeholder secrets
                                              under ROOT at the paths the pod mounts them, and
                                              write ROOT/env: the container's environment
  manifests.py break RENDERED.yaml HOW OUT    a copy broken one way (HOW), for the failure checks
"""

import base64
import os
import re
import subprocess
import sys
from pathlib import PurePosixPath

import yaml

PORTCULLIS = "portcullis"
GATEWAY_LABELS = {"app.kubernetes.io/name": "openclaw-gateway"}
GATEWAY_PORT = 18789
# cert-manager.io/v1 Certificate: the spec's fields (kubernetes-validate has no schema for it).
CERTIFICATE_SPEC = {
    "additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
    "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
    "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
    "revisionHistoryLimit", "secretName", "secretTemplate", "subject", "uris", "usages",
}
CERTIFICATE_ISSUER_REF = {"name", "kind", "group"}
CERTIFICATE_PRIVATE_KEY = {"algorithm", "encoding", "rotationPolicy", "size"}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


class Pod:
    """The Portcullis Deployment's pod and the config.yaml it mounts."""

    def __init__(self, docs):
        self.deployment = one(docs, "Deployment", PORTCULLIS)
        self.spec = self.deployment["spec"]["template"]["spec"]
        self.labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        self.container = next(c for c in self.spec["containers"] if c["name"] == PORTCULLIS)
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.mounts = self.container.get("volumeMounts", [])
        self.env = self.container.get("env", [])
        config_path = next(e["value"] for e in self.env if e["name"] == "PORTCULLIS_CONFIG")
        self.config_path = PurePosixPath(config_path)
        mount, key = self.mount_of(self.config_path)
        if mount is None:
            raise SystemExit(f"PORTCULLIS_CONFIG {config_path} is on no volume of the pod")
        key = mount.get("subPath", key)
        cm = self.volumes[mount["name"]].get("configMap")
        if cm is None:
            raise SystemExit(f"PORTCULLIS_CONFIG {config_path} is not on a ConfigMap volume")
        self.configmap = one(docs, "ConfigMap", cm["name"])
        self.config_text = self.configmap["data"][key]
        self.config = yaml.safe_load(self.config_text)

    def mount_of(self, path):
        """The volume mount under which `path` (absolute, in the pod) lies, and the rest."""
        for m in self.mounts:
            base = PurePosixPath(m["mountPath"])
            if path == base or base in path.parents:
                return m, str(path.relative_to(base))
        return None, None

    def resolve(self, p):
        """A path from config.yaml, as the pod sees it (relative ones from the config's folder)."""
        p = PurePosixPath(p)
        if not p.is_absolute():
            p = self.config_path.parent / p
        return PurePosixPath(os.path.normpath(str(p)))

    def files(self):
        """(config key, path in the pod) for every file config.yaml names."""
        out = []
        for k, v in self.config.items():
            if k.endswith("_file") or k in ("autocert_trusted_ca",):
                out.append((k, self.resolve(v)))
        for c in self.config.get("certificates") or []:
            out.append(("certificates.cert", self.resolve(c["cert"])))
            out.append(("certificates.key", self.resolve(c["key"])))
        return out

    def route_hosts(self):
        return sorted({re.sub(r"^https?://", "", r["from"]).split(":")[0] for r in self.config["routes"]})


def check(path):
    docs = load(path)
    errors = []

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    pod = Pod(docs)
    cfg = pod.config

    # Every workload: non-root, read-only root, no privilege escalation, no capabilities (but
    # the one the restricted Pod Security Standard allows), seccomp, requests and a memory limit.
    for d in find(docs, "Deployment"):
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot")
        need(psc.get("runAsUser", 0) != 0, f"{name}: pod runAsUser must not be 0")
        need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
        need(spec.get("automountServiceAccountToken") is False, f"{name}: automountServiceAccountToken false")
        need(spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks false")
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"] + spec.get("initContainers", []):
            cn = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            need(sc.get("allowPrivilegeEscalation") is False, f"{cn}: allowPrivilegeEscalation false")
            need(sc.get("readOnlyRootFilesystem") is True, f"{cn}: readOnlyRootFilesystem true")
            caps = sc.get("capabilities", {})
            need(caps.get("drop") == ["ALL"], f"{cn}: capabilities drop [ALL]")
            need(set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{cn}: adds capabilities {caps.get('add')}")
            res = c.get("resources", {})
            need({"cpu", "memory"} <= set(res.get("requests", {})), f"{cn}: cpu and memory requests")
            need("memory" in res.get("limits", {}), f"{cn}: a memory limit")
            need(":" in c["image"] or "@" in c["image"], f"{cn}: image without a tag")
            # A ConfigMap or Secret mounted with subPath never shows an update (no reload).
            for m in c.get("volumeMounts", []):
                v = vols.get(m["name"])
                need(v is not None, f"{cn}: mounts the undefined volume {m['name']}")
                if v and ("configMap" in v or "secret" in v or "projected" in v):
                    need("subPath" not in m and "subPathExpr" not in m,
                         f"{cn}: {m['name']} is mounted with subPath: the reload watcher would never see an update")
            # $(VAR) expands only from variables defined before it.
            seen = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    need(ref in seen, f"{cn}: env {e['name']} uses $({ref}) before it is defined")
                seen.add(e["name"])

    # Portcullis: two replicas; probes on the admin listener; ports as config.yaml says.
    d = pod.deployment
    c = pod.container
    need(d["spec"]["replicas"] == 2, "portcullis: 2 replicas")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(ports.get("https") == port_of(cfg["address"]), "portcullis: port https is config.yaml's address")
    if "http_redirect_addr" in cfg:
        need(ports.get("http") == port_of(cfg["http_redirect_addr"]), "portcullis: port http is http_redirect_addr")
    need(ports.get("metrics") == port_of(cfg["metrics_address"]), "portcullis: port metrics is metrics_address")
    need(not cfg["metrics_address"].startswith("127."), "metrics_address on loopback: the kubelet cannot probe it")
    for probe, url in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        need(get.get("path") == url and get.get("port") in ("metrics", ports.get("metrics")),
             f"portcullis: {probe} is GET {url} on the metrics port")

    # config.yaml's files are where the pod mounts them; data_dir is writable.
    for key, p in pod.files():
        m, rest = pod.mount_of(p)
        need(m is not None, f"config.yaml {key}: {p} is on no volume of the pod")
        if m is not None:
            v = pod.volumes[m["name"]]
            need("secret" in v or "configMap" in v or "projected" in v,
                 f"config.yaml {key}: {p} is on volume {m['name']}, not a Secret or ConfigMap")
    data = pod.resolve(cfg.get("data_dir", "data"))
    m, _ = pod.mount_of(data)
    need(m is not None and not m.get("readOnly") and
         ("emptyDir" in pod.volumes[m["name"]] or "persistentVolumeClaim" in pod.volumes[m["name"]]),
         f"config.yaml data_dir {data} must be on a writable emptyDir or PVC (the root filesystem is read-only)")
    # Secrets are read by the pod's group only.
    for v in pod.volumes.values():
        if "secret" in v:
            need(v["secret"].get("defaultMode") == 0o440, f"secret volume {v['name']}: defaultMode 0440")

    # The route to the gateway, and the NetworkPolicy that admits only Portcullis to it.
    gw = [r for r in cfg["routes"] if str(r.get("to", "")).startswith("http://openclaw-gateway:")]
    need(len(gw) == 1 and gw[0].get("allow_websockets") is True and gw[0].get("allowed_groups")
         and gw[0].get("jwt_claims_headers") == {"X-Forwarded-User": "issuer_subject"},
         "config.yaml: one route to openclaw-gateway with allow_websockets, allowed_groups and X-Forwarded-User: issuer_subject")
    gw_policies = [n for n in find(docs, "NetworkPolicy") if n["spec"]["podSelector"].get("matchLabels") == GATEWAY_LABELS]
    need(len(gw_policies) == 1, "one NetworkPolicy selecting the gateway's pods")
    for n in gw_policies:
        rules = n["spec"]["ingress"]
        need(n["spec"].get("policyTypes") == ["Ingress"] and len(rules) == 1, "gateway NetworkPolicy: one ingress rule")
        for r in rules:
            srcs = r.get("from", [])
            need(len(srcs) == 1 and set(srcs[0]) == {"podSelector"}
                 and selects(srcs[0]["podSelector"]["matchLabels"], pod.labels),
                 "gateway NetworkPolicy: admits Portcullis's pods and nothing else")
            need([p["port"] for p in r.get("ports", [])] == [GATEWAY_PORT], f"gateway NetworkPolicy: port {GATEWAY_PORT} only")

    # Services send to named ports that exist; the PDB keeps one replica.
    by_pod = {}
    for dep in find(docs, "Deployment"):
        tmpl = dep["spec"]["template"]
        by_pod[dep["metadata"]["name"]] = (tmpl["metadata"]["labels"],
                                           {p["name"] for cc in tmpl["spec"]["containers"] for p in cc.get("ports", [])})
    for s in find(docs, "Service"):
        targets = [v for v in by_pod.values() if selects(s["spec"]["selector"], v[0])]
        need(len(targets) == 1, f"Service {s['metadata']['name']}: selects one Deployment's pods")
        for p in s["spec"]["ports"]:
            need(any(p["targetPort"] in t[1] for t in targets),
                 f"Service {s['metadata']['name']}: targetPort {p['targetPort']} is no container port")
    svc = one(docs, "Service", PORTCULLIS)
    need({(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} >= {(443, "https")}, "Service: 443 to https")
    if "http_redirect_addr" in cfg:
        need((80, "http") in {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}, "Service: 80 to http")
        # The redirect names the port Portcullis listens on: it must be the one clients use.
        need(port_of(cfg["address"]) == 443, "config.yaml address: port 443, as the http redirect names it")
    # A non-root process without capabilities binds a port below 1024 only through the sysctl.
    low = min(ports.values())
    sysctls = {x["name"]: int(x["value"]) for x in pod.spec.get("securityContext", {}).get("sysctls", [])}
    need(low >= 1024 or sysctls.get("net.ipv4.ip_unprivileged_port_start", 1024) <= low,
         f"portcullis: port {low} needs net.ipv4.ip_unprivileged_port_start <= {low}")
    pdb = one(docs, "PodDisruptionBudget", PORTCULLIS)
    need(pdb["spec"].get("minAvailable") == 1 and selects(pdb["spec"]["selector"]["matchLabels"], pod.labels),
         "PodDisruptionBudget: minAvailable 1 over Portcullis's pods")

    # A session store: its URL names a Service of this set, on a port it has, and only
    # Portcullis may reach that store.
    store = next((e for e in pod.env if e["name"] == "PORTCULLIS_SESSION_STORE"), None)
    if store is not None:
        m = re.match(r"^rediss?://(?::[^@]*@)?([a-z0-9.-]+):(\d+)(/\d+)?$", store["value"])
        need(m is not None, f"PORTCULLIS_SESSION_STORE is no redis:// URL: {store['value']}")
        if m:
            s = one(docs, "Service", m.group(1))
            need(int(m.group(2)) in [p["port"] for p in s["spec"]["ports"]], "session store: the Service has that port")
            labels = by_pod[[k for k, v in by_pod.items() if selects(s["spec"]["selector"], v[0])][0]][0]
            guards = [n for n in find(docs, "NetworkPolicy") if selects(n["spec"]["podSelector"]["matchLabels"], labels)]
            need(len(guards) == 1 and all(
                len(r.get("from", [])) == 1 and selects(r["from"][0]["podSelector"]["matchLabels"], pod.labels)
                for r in guards[0]["spec"]["ingress"]), "session store: a NetworkPolicy admits only Portcullis")
            pw = [e["valueFrom"]["secretKeyRef"]["name"] for e in pod.env if "valueFrom" in e]
            store_pw = [e["valueFrom"]["secretKeyRef"]["name"] for dep in find(docs, "Deployment")
                        if selects(s["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
                        for cc in dep["spec"]["template"]["spec"]["containers"] for e in cc.get("env", []) if "valueFrom" in e]
            need(store_pw and set(store_pw) <= set(pw), "session store: Portcullis reads the store's password Secret")

    # cert-manager's Certificate (no schema in kubernetes-validate): known fields only, the
    # Secret the pod mounts for config.yaml's certificates, every route host.
    for cert in find(docs, "Certificate"):
        spec = cert["spec"]
        need(cert["apiVersion"] == "cert-manager.io/v1", "Certificate: apiVersion cert-manager.io/v1")
        need(set(spec) <= CERTIFICATE_SPEC, f"Certificate: unknown spec fields {set(spec) - CERTIFICATE_SPEC}")
        need(set(spec.get("issuerRef", {})) <= CERTIFICATE_ISSUER_REF and "name" in spec.get("issuerRef", {}),
             "Certificate: issuerRef with a name and known fields")
        need(set(spec.get("privateKey", {})) <= CERTIFICATE_PRIVATE_KEY, "Certificate: privateKey's known fields")
        cert_mounts = {pod.mount_of(p)[0]["name"] for k, p in pod.files() if k.startswith("certificates.")}
        need([pod.volumes[n]["secret"]["secretName"] for n in cert_mounts] == [spec.get("secretName")],
             "Certificate: secretName is the Secret config.yaml's certificates are read from")
        need(set(pod.route_hosts()) <= set(spec.get("dnsNames", [])), "Certificate: covers every route host")

    for e in errors:
        print(f"{path}: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"{path}: ok")


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pod_tree(path, root):
    """config.yaml and placeholder secrets under ROOT, at the pod's paths; ROOT/env holds the
    container's environment (secretKeyRef values replaced by placeholders, $(VAR) expanded,
    paths on the pod's volumes moved under ROOT) one NAME=VALUE a line."""
    pod = Pod(load(path))

    def here(p):
        return os.path.join(root, str(p).lstrip("/"))

    os.makedirs(os.path.dirname(here(pod.config_path)), exist_ok=True)
    with open(here(pod.config_path), "w") as f:
        f.write(pod.config_text)
    files = dict((str(p), k) for k, p in pod.files())
    for p, key in files.items():
        out = here(p)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if key == "cookie_secret_file":
            with open(out, "w") as f:
                f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        elif key == "signing_key_file":
            openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", out)
        elif key == "certificates.cert":
            k = next(q for q, kk in files.items() if kk == "certificates.key")
            hosts = pod.route_hosts()
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", here(k), "-out", out, "-days", "2", "-subj", f"/CN={hosts[0]}",
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts))
        elif key == "certificates.key":
            pass  # written with its certificate
        else:
            with open(out, "w") as f:
                f.write("placeholder-" + key + "\n")
    values = {}
    lines = []
    for e in pod.env:
        if "value" in e:
            v = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m.group(1), m.group(0)), e["value"])
            if v.startswith("/") and pod.mount_of(PurePosixPath(v))[0] is not None:
                v = here(v)
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            v = f"placeholder{ref['name']}{ref['key']}".replace("-", "").replace("_", "")
        values[e["name"]] = v
        lines.append(f"{e['name']}={v}")
    with open(os.path.join(root, "env"), "w") as f:
        f.write("\n".join(lines) + "\n")


def break_copy(path, how, out):
    docs = load(path)
    dep = one(docs, "Deployment", PORTCULLIS)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    if how == "replicas-string":
        dep["spec"]["replicas"] = "two"
    elif how == "unknown-field":
        c["readinessProbes"] = c["readinessProbe"]
    elif how == "subpath":
        for m in c["volumeMounts"]:
            if m["name"] == "config":
                m["mountPath"] += "/config.yaml"
                m["subPath"] = "config.yaml"
    elif how == "gateway-open":
        for n in find(docs, "NetworkPolicy"):
            if n["spec"]["podSelector"].get("matchLabels") == GATEWAY_LABELS:
                n["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
    else:
        raise SystemExit(f"unknown way to break: {how}")
    with open(out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"check": check, "pod-tree": pod_tree, "break": break_copy}[cmd](*args)
