#!/usr/bin/env python3
"""Renders and checks the apflow Helm chart (run by scripts/ops-checks).

What is checked, honestly:
  * `helm lint --strict` and `helm template` through Helm's own Go SDK (v4), bound by the
    PyPI package helm-python-sdk (libhelm_c.so): the same template engine, Sprig
    functions and chart loader as the helm binary, with no cluster contacted. The helm
    binary itself cannot be installed on our machines (not in Debian 12; its release
    tarball is not reachable).
  * Every rendered document is YAML with apiVersion, kind and metadata.name.
  * Built-in Kubernetes kinds (Deployment, Service, ConfigMap, Secret) are validated
    against the Kubernetes OpenAPI schemas bundled in the PyPI package
    kubernetes-validate, strictly (unknown fields are errors).
  * Custom resources: the fields apflow relies on are checked below; the rendered
    documents are written to --docs-out, where validate/validate-crs.mjs checks the
    KEDA and Prometheus Operator ones against those projects' CRD schemas
    (kubernetes-models on npm). Strimzi KafkaTopic/KafkaUser and ScyllaCluster have no
    schema package we can install: for them the field checks below are all there is.
  * The PrometheusRule carries exactly deploy/prometheus/rules/apflow.rules.yml.
  * Every stage runs as a Deployment (ingest, prompt-proc, alert-dist, filtering,
    archive), and with --apflow each container's args are an apflow command line the
    binary accepts (`apflow ARGS --help` exits 0: the subcommand and every flag exist).
  * The alert topic the rendered configuration makes apflow write ([producer]
    topic_template for each schema major) is a Strimzi KafkaTopic, every community
    broker's KafkaUser may read it, and the apflow user's ACLs cover it.
  * The filtering service's ConfigMap carries exactly the filter files of --filters
    (deploy/filters), and its Deployment mounts it and runs `apflow distribute` on it.
  * The rendered apflow.toml is written to --config-out for `apflow config check`.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

BUILTIN = {("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret")}
# Custom resources: (apiVersion, kind) -> dotted paths that must be present.
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers"],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ["spec.secretTargetRef"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector.matchLabels", "spec.endpoints"],
    ("monitoring.coreos.com/v1", "PrometheusRule"): ["spec.groups"],
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): ["metadata.labels.strimzi.io/cluster", "spec.topicName", "spec.partitions", "spec.replicas"],
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): ["metadata.labels.strimzi.io/cluster", "spec.authentication.type", "spec.authorization.acls"],
    ("scylla.scylladb.com/v1", "ScyllaCluster"): ["spec.version", "spec.datacenter.name", "spec.datacenter.racks"],
}
errors = []


def fail(msg):
    errors.append(msg)
    print(f"  FAIL {msg}")


def get(doc, path):
    """Follows a dotted path; label keys with dots are tried whole first."""
    node, parts = doc, path.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(node, dict):
            return None
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            return None
    return node


def documents(rendered):
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                yield path, doc


def check_render(chart, values, label, k8s_version):
    rendered = chart.render(values, name="apflow", namespace="alert-production")
    kinds = {}
    for path, doc in documents(rendered):
        where = f"{label}: {path} {doc.get('kind')}/{get(doc, 'metadata.name')}"
        for key in ("apiVersion", "kind", "metadata.name"):
            if get(doc, key) in (None, ""):
                fail(f"{where}: no {key}")
        gvk = (doc.get("apiVersion"), doc.get("kind"))
        kinds[gvk] = kinds.get(gvk, 0) + 1
        if gvk in BUILTIN:
            try:
                kubernetes_validate.validate(doc, k8s_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{where}: {e.message} at {'.'.join(map(str, e.path))}")
        elif gvk in CUSTOM:
            for key in CUSTOM[gvk]:
                if get(doc, key) in (None, "", [], {}):
                    fail(f"{where}: no {key}")
        else:
            fail(f"{where}: kind {gvk} is not known to check_chart.py")
    summary = ", ".join(f"{n} {k}" for (_, k), n in sorted(kinds.items(), key=lambda x: x[0][1]))
    print(f"  ok   {label}: {summary}")
    return rendered


STAGES = {"ingest": "ingest", "prompt-proc": "process", "alert-dist": "alert-dist",
          "filtering": "distribute", "archive": "archive"}


def check_stages(docs, apflow):
    """Every stage is a Deployment running its apflow subcommand, with args the binary accepts."""
    deployments = {d["metadata"]["name"].removeprefix("apflow-"): d for d in docs if d["kind"] == "Deployment"}
    for stage, command in STAGES.items():
        dep = deployments.get(stage)
        if dep is None:
            fail(f"no Deployment for the {stage} stage")
            continue
        container = dep["spec"]["template"]["spec"]["containers"][0]
        argv = [str(a) for a in container.get("args", [])]
        if argv[:1] != [command]:
            fail(f"the {stage} Deployment runs {argv[:1]}, not apflow {command}")
            continue
        if apflow:
            r = subprocess.run([apflow, *argv, "--help"], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"the {stage} Deployment's args are refused by apflow: {argv}: {r.stderr.strip()}")
                continue
    checked = "accepted by " + apflow if apflow else "not run (no --apflow)"
    print(f"  ok   one Deployment per stage ({', '.join(STAGES)}); args {checked}")


def check_alert_topics(docs):
    """The alert topic apflow writes exists in Strimzi and brokers may read it."""
    config = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")]
    producer = tomllib.loads(config[0]["data"]["apflow.toml"]).get("producer", {})
    template = producer.get("topic_template")
    if not template:
        fail("the rendered apflow.toml sets no [producer] topic_template (apflow would write alerts-v11, outside the prefix)")
        return
    topics = {d["spec"]["topicName"] for d in docs if d["kind"] == "KafkaTopic"}
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    brokers = [u for u in users.values()
               if u["metadata"]["labels"].get("app.kubernetes.io/component") == "community-broker"]
    # The majors Strimzi declares: the topics matching the template.
    head, _, tail = template.partition("{major}")
    majors = [t[len(head):len(t) - len(tail)] for t in topics
              if t.startswith(head) and t.endswith(tail) and t[len(head):len(t) - len(tail)].isdigit()]
    if "11" not in majors:
        fail(f"no KafkaTopic for {template.replace('{major}', '11')}, the topic apflow writes (schema major 11): {sorted(topics)}")
    for major in majors:
        topic = template.replace("{major}", major)
        for u in brokers:
            reads = [a for a in u["spec"]["authorization"]["acls"]
                     if a["resource"]["type"] == "topic" and "Read" in a["operations"]
                     and (a["resource"]["name"] == topic
                          or (a["resource"].get("patternType") == "prefix" and topic.startswith(a["resource"]["name"])))]
            if not reads:
                fail(f"community broker {u['metadata']['name']} may not read {topic}")
    print(f"  ok   alert topics {sorted(template.replace('{major}', m) for m in majors)} declared, readable by {len(brokers)} community brokers")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chart")
    ap.add_argument("--rules", required=True, help="deploy/prometheus/rules/apflow.rules.yml")
    ap.add_argument("--filters", required=True, help="deploy/filters (the shipped filter files)")
    ap.add_argument("--config-out", required=True, help="where to write the rendered apflow.toml")
    ap.add_argument("--docs-out", required=True, help="where to write every rendered document (JSON)")
    ap.add_argument("--apflow", help="the apflow binary: each Deployment's args must be accepted by it")
    args = ap.parse_args()
    chart_dir = pathlib.Path(args.chart)
    k8s = kubernetes_validate.latest_version()
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {k8s} (kubernetes-validate {kubernetes_validate.version.__version__})")

    report = helm.lint(str(chart_dir), strict=True)
    for m in report.get("messages", []):
        if m["severity"] >= 2:
            fail(f"helm lint: {m['path']}: {m['error']}")
    for e in report.get("errors", []):
        fail(f"helm lint: {e}")
    print(f"  ok   helm lint --strict ({len(report.get('messages', []))} info messages)")

    chart = helm.Chart.load(str(chart_dir))
    rendered = check_render(chart, None, "default values", k8s)
    pathlib.Path(args.docs_out).write_text(json.dumps([d for _, d in documents(rendered)]))
    check_render(chart, {"promptProc": {"keda": {"enabled": False}}}, "without KEDA", k8s)
    check_render(chart, {"strimzi": {"enabled": False}, "scylla": {"enabled": False},
                         "serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
                 "without operators", k8s)
    s3 = check_render(chart, {"archive": {"url": "s3://alerts/lsst?upload_interval=30s",
                                          "s3": {"existingSecret": "apflow-archive-s3"},
                                          "storage": {"existingClaim": ""}}},
                      "with an S3 archive", k8s)
    check_stages([d for _, d in documents(s3) if d["kind"] == "Deployment"], args.apflow)
    docs = [d for _, d in documents(rendered)]
    check_stages(docs, args.apflow)
    check_alert_topics(docs)

    rules = yaml.safe_load(pathlib.Path(args.rules).read_text())
    prom_rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if len(prom_rules) != 1 or prom_rules[0]["spec"] != rules:
        fail("the PrometheusRule does not carry deploy/prometheus/rules/apflow.rules.yml (copy it to files/)")
    else:
        print("  ok   PrometheusRule == deploy/prometheus/rules/apflow.rules.yml")

    shipped = {p.name: p.read_text() for p in sorted(pathlib.Path(args.filters).glob("*.toml"))}
    fcm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-filters")]
    if len(fcm) != 1 or fcm[0]["data"] != shipped:
        fail("the filters ConfigMap does not carry deploy/filters/*.toml (copy them to files/filters/)")
    else:
        print(f"  ok   filters ConfigMap == deploy/filters ({len(shipped)} files)")
    dep = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-filtering")]
    if len(dep) != 1 or len(fcm) != 1:
        fail(f"expected one filtering Deployment and one filters ConfigMap, got {len(dep)} and {len(fcm)}")
    else:
        pod = dep[0]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        volumes = [v["name"] for v in pod.get("volumes", [])
                   if v.get("configMap", {}).get("name") == fcm[0]["metadata"]["name"]]
        mounted = [m for m in container.get("volumeMounts", [])
                   if m["name"] in volumes and m["mountPath"] == "/etc/apflow-filters"]
        if container["args"][:3] != ["distribute", "--filters", "/etc/apflow-filters"]:
            fail(f"the filtering Deployment does not run apflow distribute on /etc/apflow-filters: {container['args']}")
        elif not mounted:
            fail("the filtering Deployment does not mount the filters ConfigMap at /etc/apflow-filters")
        else:
            print("  ok   the filtering Deployment runs apflow distribute on the mounted filters ConfigMap")

    config = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")]
    text = config[0]["data"]["apflow.toml"]
    tomllib.loads(text)
    pathlib.Path(args.config_out).write_text(text)
    print(f"  ok   rendered apflow.toml parses as TOML (written to {args.config_out})")

    if errors:
        print(f"{len(errors)} chart problem(s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
