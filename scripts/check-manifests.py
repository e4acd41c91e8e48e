#!/usr/bin/env python3
"""Checks the rendered Kubernetes objects (`kubectl kustomize deploy/overlays/example`) against
what the project promises an operator: valid object shapes for the kinds used, one replica with
a state volume (or, in exactly-once delivery, a Deployment of standbys with no volume claim), probes on the admin port, resources, a restricted security context, the token
from a Secret, a grace period longer than the shutdown needs, exactly one Prometheus scrape path
(the Pod's annotations, not also the Service's), Parallel pod management (a rollout replaces an
unready pod), a ReadWriteOncePod state claim (one writer), no service-link variables, and no
PodDisruptionBudget (for one replica it either blocks node drains or does nothing), and no
state changelog named without the org (and group): one changelog per deployment.

Reads the multi-document YAML on stdin; exits 1 naming every problem it finds."""
import sys

import yaml

API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "Deployment": "apps/v1",  # the exactly-once overlay: standbys, no volume
    "PodDisruptionBudget": "policy/v1",  # recognised, to be refused with a reason below
}
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def dig(obj, *path, default=None):
    for key in path:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
by_kind = {}
for doc in docs:
    kind = doc.get("kind")
    name = dig(doc, "metadata", "name")
    need(kind in API_VERSIONS, f"unexpected kind {kind!r}")
    need(doc.get("apiVersion") == API_VERSIONS.get(kind), f"{kind}/{name}: apiVersion {doc.get('apiVersion')!r}")
    need(isinstance(name, str) and name and len(name) <= 63 and name == name.lower(), f"{kind}: bad metadata.name {name!r}")
    by_kind.setdefault(kind, []).append(doc)
    if kind == "PodDisruptionBudget":
        problems.append("PodDisruptionBudget: with one replica it blocks node drains or does nothing (see deploy/base/kustomization.yaml)")
        continue
    for value in (dig(doc, "metadata", "labels", default={}) or {}).values():
        need(isinstance(value, str), f"{kind}/{name}: label values must be strings")
    if kind == "ConfigMap":
        for key, value in (doc.get("data") or {}).items():
            need(isinstance(value, str), f"ConfigMap {name}: {key} must be a string, got {value!r}")
            need("TOKEN" not in key or key.endswith("_FILE"), f"ConfigMap {name}: secret {key} belongs in a Secret")
            need("PASSWORD" not in key, f"ConfigMap {name}: secret {key} belongs in a Secret")

for kind in ["ConfigMap", "Service", "ServiceAccount"]:
    need(len(by_kind.get(kind, [])) == 1, f"expected one {kind}, found {len(by_kind.get(kind, []))}")
workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
need(len(workloads) == 1, f"expected one StatefulSet or Deployment, found {len(workloads)}")
if problems:
    print("\n".join(problems))
    sys.exit(1)

sts = workloads[0]
kind = sts["kind"]
svc = by_kind["Service"][0]
cm = by_kind["ConfigMap"][0]
spec = sts["spec"]
pod = dig(spec, "template", "spec")
labels = dig(spec, "template", "metadata", "labels", default={})
exactly_once = cm["data"].get("CASESTREAM_DELIVERY") == "exactly-once"
if kind == "StatefulSet":
    need(spec.get("replicas") == 1, "StatefulSet: exactly one replica per org")
    need(spec.get("serviceName") == svc["metadata"]["name"], "StatefulSet: serviceName must name the Service")
    need(spec.get("podManagementPolicy") == "Parallel", "StatefulSet: podManagementPolicy Parallel (with OrderedReady a rollout never replaces an unready pod)")
else:
    # Standbys: only exactly-once delivery elects one active instance; at-least-once replicas
    # would each announce every case.
    need(exactly_once, "Deployment: replicas need CASESTREAM_DELIVERY exactly-once (one active instance, the others standbys)")
    need(int(spec.get("replicas") or 1) >= 2, "Deployment: at least two replicas (a standby)")
    need(not spec.get("volumeClaimTemplates"), "Deployment: no state volume claim (the state lives in the changelog)")
need(pod.get("enableServiceLinks") is False, "pod enableServiceLinks false (service-link variables such as KAFKA_UI_SERVICE_HOST reach casestream's KAFKA_* settings)")
selector = dig(spec, "selector", "matchLabels", default={})
need(selector and all(labels.get(k) == v for k, v in selector.items()), "StatefulSet: selector must match the pod labels")
need(all(labels.get(k) == v for k, v in (dig(svc, "spec", "selector", default={}) or {}).items()) and dig(svc, "spec", "selector"), "Service: selector must match the pods")
claims = spec.get("volumeClaimTemplates") or []
if kind == "StatefulSet":
    need(any(dig(c, "spec", "resources", "requests", "storage") for c in claims), "StatefulSet: a volume claim for the state")
for claim in claims:
    need(dig(claim, "spec", "accessModes") == ["ReadWriteOncePod"], f"volume claim {dig(claim, 'metadata', 'name')}: accessModes [ReadWriteOncePod] (one writer)")
need(int(pod.get("terminationGracePeriodSeconds", 30)) >= 30, "terminationGracePeriodSeconds must leave time to finish a page and flush")
psc = pod.get("securityContext") or {}
need(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot")
need(dig(psc, "seccompProfile", "type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
containers = pod.get("containers") or []
need(len(containers) == 1, "one container")
c = containers[0]
csc = c.get("securityContext") or {}
need(csc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem")
need(csc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation false")
need(dig(csc, "capabilities", "drop") == ["ALL"], "container drops ALL capabilities")
for kind in ("requests", "limits"):
    for res in ("cpu", "memory"):
        need(dig(c, "resources", kind, res), f"container resources.{kind}.{res}")
ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
need(ports.get("admin") == 8080, "container port admin 8080")
need(dig(c, "livenessProbe", "httpGet", "path") == "/livez", "liveness probe on /livez")
need(dig(c, "readinessProbe", "httpGet", "path") == "/readyz", "readiness probe on /readyz")
mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
need(mounts.get("state") == cm["data"].get("CASESTREAM_STATE_DIR"), "the state volume is mounted at CASESTREAM_STATE_DIR")
volumes = {v["name"]: v for v in pod.get("volumes") or []}
for name in mounts:
    need(name in volumes or any(cl["metadata"]["name"] == name for cl in claims), f"volume {name} is defined")
env = {e["name"]: e for e in c.get("env") or []}
token_file = dig(env, "SNAPENGAGE_API_TOKEN_FILE", "value", default="")
secret_mount = mounts.get("api-token", "")
need(token_file.startswith(secret_mount + "/") and dig(volumes, "api-token", "secret", "secretName"), "the API token comes from a Secret volume")
need(dig(env, "KAFKA_SASL_PASSWORD", "valueFrom", "secretKeyRef", "name"), "the SASL password comes from a Secret")
need(any(dig(e, "configMapRef", "name") == cm["metadata"]["name"] for e in c.get("envFrom") or []), "settings come from the ConfigMap")
# One changelog per deployment: a CASESTREAM_TOPIC_STATE named without the org (and the group,
# when one is set) is shared by every deployment that uses the same manifest, which then mix
# their states (one suppresses the other's announcements, a `state reset --all` rewrites both).
settings = dict(cm["data"])
settings.update({name: e["value"] for name, e in env.items() if "value" in e})
changelog = settings.get("CASESTREAM_TOPIC_STATE")
if changelog is not None:
    org, group = settings.get("SNAPENGAGE_ORG_ID"), settings.get("CASESTREAM_GROUP")
    unset = "leave it unset for casestream.<org>[.<group>].state, one changelog per deployment"
    # Whole dot-separated parts: org 1234 is not in casestream.12345.state.
    parts = changelog.split(".")
    need(org and org in parts, f"CASESTREAM_TOPIC_STATE {changelog!r} must name the deployment's org, SNAPENGAGE_ORG_ID {org!r}: {unset}")
    need(not group or group in parts, f"CASESTREAM_TOPIC_STATE {changelog!r} must name the deployment's group, CASESTREAM_GROUP {group!r}: {unset}")
# Exactly one scrape path: the Pod's annotations. With the Service's too, Prometheus' usual
# kubernetes-pods and kubernetes-service-endpoints jobs would both scrape the pod.
pod_ann = dig(sts, "spec", "template", "metadata", "annotations", default={}) or {}
need(pod_ann.get("prometheus.io/scrape") == "true" and pod_ann.get("prometheus.io/port") == "8080"
     and pod_ann.get("prometheus.io/path", "/metrics") == "/metrics", "Prometheus scrape annotations on the Pod template (port 8080, /metrics)")
for doc in docs:
    ann = dig(doc, "metadata", "annotations", default={}) or {}
    need(not any(k.startswith("prometheus.io/") for k in ann), f"{doc['kind']}/{dig(doc, 'metadata', 'name')}: prometheus.io annotations (the Pod's are the one scrape path; both would scrape twice)")
need(any(p.get("port") == 8080 for p in dig(svc, "spec", "ports", default=[])), "Service exposes the admin port")

if problems:
    print("rendered manifests have problems:\n- " + "\n- ".join(problems))
    sys.exit(1)
print(f"ok: {len(docs)} objects ({', '.join(sorted(by_kind))}) pass the checks")
