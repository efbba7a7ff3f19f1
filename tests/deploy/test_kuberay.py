"""Deployment files (cluster/, infra/) checked offline against what their tools would accept.

- Ray launcher YAML: Ray's own `prepare_config` + `validate_config` (ray/autoscaler/ray-schema.json),
  and AWS `node_config` against botocore's EC2 RunInstances input shape (Ray passes it through
  unchecked, so a misspelled EC2 key would only fail at launch time).
- KubeRay manifests: the CRDs' openAPIV3Schema from ../shared/schemas/kuberay (read at test time,
  never copied), made strict like `kubeconform -strict`: unknown fields are errors.
- Dockerfile: a small parser (known instructions, FROM first, continuations, COPY sources).
- compose: keys against the Compose spec's names, services and wiring.
- Commands in the RayJob entrypoint and the READMEs' code blocks: sdbatch and ray commands parsed
  by their own click apps (subcommands and every flag), aws commands against botocore's models.
Every check has a twin that misspells something in a copy and expects the error.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import shlex
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
INFRA = REPO / "infra"
KUBERAY_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kuberay"

LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
KUBE_MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
READMES = [REPO / "README.md", CLUSTER / "README.md", INFRA / "README.md"]
IMAGE = "ghcr.io/YOUR_ORG/sdbatch-worker:latest"
IMAGE_ROOT = "/opt/sdbatch/"  # where infra/Dockerfile puts the repo's files
# What the launcher must declare for each instance type it uses (the autoscaler plans with it).
INSTANCE_RESOURCES = {"m6i.2xlarge": (8, 0), "g5.xlarge": (4, 1), "g6e.xlarge": (4, 1),
                      "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8)}


def load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def renamed(doc, path: list, old: str, new: str):
    """A deep copy of doc with key `old` renamed to `new` in the mapping at `path`."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path:
        node = node[step]
    assert old in node, f"{old} not at {path}: the test's mutation is stale"
    node[new] = node.pop(old)
    return doc


def ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def test_the_files_are_there():
    assert [p.name for p in LAUNCHER_CONFIGS] and [p.name for p in KUBE_MANIFESTS]
    for name in ("Dockerfile", "compose.yaml", ".env.example", "bucket/lifecycle.json", "bucket/policy.json"):
        assert (INFRA / name).is_file(), name


# --------------------------------------------------------------------------- Ray cluster launcher

def ray_validate(config: dict) -> None:
    """What `ray up` checks before it talks to a cloud: defaults merged, then the JSON schema and
    the cross-field rules (head type among the node types, sum of min_workers <= max_workers)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=ids(LAUNCHER_CONFIGS))
def test_launcher_config_passes_rays_validation(path):
    ray_validate(load_yaml(path))


def _worker_type(config: dict) -> str:
    return next(t for t in config["available_node_types"] if t != config["head_node_type"])


LAUNCHER_TYPOS = {
    "top level": lambda c: renamed(c, [], "max_workers", "max_workerz"),
    "in a node type": lambda c: renamed(c, ["available_node_types", _worker_type(c)], "min_workers", "min_worker"),
    "in docker": lambda c: renamed(c, ["docker"], "run_options", "run_option"),
}


@pytest.mark.parametrize("where", list(LAUNCHER_TYPOS))
@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=ids(LAUNCHER_CONFIGS))
def test_launcher_config_misspelling_is_caught(path, where):
    bad = LAUNCHER_TYPOS[where](load_yaml(path))
    with pytest.raises(jsonschema.ValidationError, match="Additional properties are not allowed"):
        ray_validate(bad)


def run_instances_errors(node_config: dict) -> str:
    """botocore's own parameter check of an EC2 RunInstances call built from a Ray node_config
    (Ray adds MinCount/MaxCount, tags and subnets itself)."""
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    report = ParamValidator().validate({**node_config, "MinCount": 1, "MaxCount": 1}, shape)
    return report.generate_report() if report.has_errors() else ""


def aws_node_types(config: dict):
    if config["provider"]["type"] != "aws":
        pytest.skip(f"no offline schema for {config['provider']['type']} node_config")
    return config["available_node_types"].items()


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=ids(LAUNCHER_CONFIGS))
def test_aws_node_configs_are_valid_run_instances_parameters(path):
    for name, node_type in aws_node_types(load_yaml(path)):
        assert run_instances_errors(node_type["node_config"]) == "", name


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=ids(LAUNCHER_CONFIGS))
def test_aws_node_config_misspelling_is_caught(path):
    config = load_yaml(path)
    worker = next(n for n, t in aws_node_types(config) if "InstanceMarketOptions" in t["node_config"])
    at = ["available_node_types", worker, "node_config"]

    def node_config(doc):
        return doc["available_node_types"][worker]["node_config"]

    assert "InstanceTyp" in run_instances_errors(node_config(renamed(config, at, "InstanceType", "InstanceTyp")))
    deep = renamed(config, at + ["InstanceMarketOptions"], "MarketType", "MarketTyp")
    assert "MarketTyp" in run_instances_errors(node_config(deep))
    # ... which Ray's own schema lets through: node_config is provider-specific, so unchecked.
    ray_validate(deep)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=ids(LAUNCHER_CONFIGS))
def test_launcher_cluster_shape(path):
    config = load_yaml(path)
    assert config["docker"]["image"] == IMAGE
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    # The head runs the driver and the Jobs API; no actor (num_gpus=1, num_cpus=0) may land there.
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    assert head.get("max_workers", 0) == 0 and head.get("min_workers", 0) == 0
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert any(t.get("max_workers", 0) > 0 for t in workers.values()), "no worker type may start"
    for name, node_type in types.items():
        assert node_type.get("min_workers", 0) <= node_type.get("max_workers", config["max_workers"]), name
        instance = node_type["node_config"].get("InstanceType")
        if instance in INSTANCE_RESOURCES and name != config["head_node_type"]:
            cpus, gpus = INSTANCE_RESOURCES[instance]
            assert (node_type["resources"]["CPU"], node_type["resources"]["GPU"]) == (cpus, gpus), name
    assert config["idle_timeout_minutes"] > 0


# --------------------------------------------------------------------------- KubeRay CRDs

# ObjectMeta is not in a CRD's schema (`metadata: {type: object}`): the API server checks it itself.
# Loosely here: its field names (a typo is still caught) and a DNS-1123 name.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        **{key: {} for key in ("generateName", "finalizers", "ownerReferences", "uid", "resourceVersion",
                               "generation", "creationTimestamp", "deletionTimestamp",
                               "deletionGracePeriodSeconds", "managedFields", "selfLink")},
    },
    "additionalProperties": False,
}


def strict(schema):
    """additionalProperties: false on every object schema that declares properties and neither
    additionalProperties nor x-kubernetes-preserve-unknown-fields (what kubeconform -strict does).
    int-or-string schemas have no properties and are left alone; embedded resources get the loose
    ObjectMeta above for their metadata."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value  # keywords and data (enum, default, x-kubernetes-validations, ...)
    if schema.get("x-kubernetes-embedded-resource") and "metadata" in out.get("properties", {}):
        out["properties"]["metadata"] = OBJECT_META
    if ("properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type: map: items are unique by their key fields (e.g. env by name)."""
    if validator.is_type(instance, "array") and schema.get("x-kubernetes-list-type") == "map":
        seen = set()
        for item in instance:
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys) if isinstance(item, dict) else None
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for list-map keys {keys}: {item!r}")
            seen.add(key)


def _list_type(validator, list_type, instance, schema):
    if list_type == "set" and validator.is_type(instance, "array"):
        items = [json.dumps(i, sort_keys=True) for i in instance]
        if len(items) != len(set(items)):
            yield jsonschema.ValidationError(f"duplicate items in a list of type set: {instance!r}")


KubeValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {
    "x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-list-type": _list_type})


@functools.cache
def _crds() -> dict:
    """(group, kind) -> CRD, from ../shared/schemas/kuberay; the test skips where it is absent."""
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip("KubeRay CRD check: ../shared/schemas/kuberay not present")
    crds = {}
    for path in sorted(KUBERAY_SCHEMAS.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return crds


@functools.cache
def crd_validator(api_version: str, kind: str):
    group, _, version = api_version.partition("/")
    crd = _crds().get((group, kind))
    assert crd, f"no CRD for {kind} in group {group} under {KUBERAY_SCHEMAS}"
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served", True)}
    assert version in served, f"{kind} {api_version}: served versions are {sorted(served)}"
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return KubeValidator(schema)


def kube_errors(doc: dict) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def kube_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", KUBE_MANIFESTS, ids=ids(KUBE_MANIFESTS))
def test_kuberay_manifest_matches_crd_schema(path):
    for doc in kube_docs(path):
        assert kube_errors(doc) == []


KUBE_TYPOS = {
    "RayCluster": [(["spec", "workerGroupSpecs", 0], "minReplicas", "minReplica"),
                   (["spec"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
                   (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0], "envFrom", "envfrom"),
                   (["metadata"], "labels", "label")],
    "RayJob": [(["spec"], "entrypoint", "entrypointt"),
               (["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
               (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0],
                "volumeMounts", "volumeMount")],
}


@pytest.mark.parametrize("path", KUBE_MANIFESTS, ids=ids(KUBE_MANIFESTS))
def test_kuberay_manifest_misspelling_is_caught(path):
    for doc in kube_docs(path):
        assert KUBE_TYPOS.get(doc["kind"]), f"add misspellings for {doc['kind']} to KUBE_TYPOS"
        for at, old, new in KUBE_TYPOS[doc["kind"]]:
            errors = kube_errors(renamed(doc, at, old, new))
            assert any(f"'{new}' was unexpected" in e for e in errors), (new, errors)


def test_kuberay_strictness_keeps_int_or_string_and_list_maps():
    """Quantities may be ints or strings; a duplicated env name is an error, as the API server says."""
    doc = kube_docs(CLUSTER / "kuberay" / "raycluster.yaml")[0]
    container = ["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0]
    ok = copy.deepcopy(doc)
    node = ok
    for step in container:
        node = node[step]
    node["resources"]["limits"].update({"cpu": 3, "memory": "12Gi"})
    node["env"] = [{"name": "A", "value": "1"}]
    assert kube_errors(ok) == []
    node["env"].append({"name": "A", "value": "2"})
    node["resources"]["limits"]["memory"] = "12 GB"
    errors = kube_errors(ok)
    assert any("duplicate entry" in e for e in errors) and any("does not match" in e for e in errors), errors


def _containers(cluster_spec: dict):
    yield cluster_spec["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["template"]["spec"]["containers"]


SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


def test_raycluster_shape():
    (doc,) = kube_docs(CLUSTER / "kuberay" / "raycluster.yaml")
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    head_ports = {p["containerPort"] for c in head["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert {6379, 8265} <= head_ports
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        (worker,) = group["template"]["spec"]["containers"]
        assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        mounts = {m["mountPath"] for m in worker.get("volumeMounts", [])}
        assert "/models" in mounts, "the model cache volume (SDBATCH_CACHE, HF_HOME live under /models)"
    for containers in _containers(spec):
        for container in containers:
            assert container["image"] == IMAGE
            assert any("secretRef" in e for e in container.get("envFrom", [])), "S3 credentials from a Secret"
            for env in container.get("env", []):
                assert not (SECRET_NAME.search(env["name"]) and "value" in env), f"inline {env['name']}"


def test_rayjob_shape():
    (job,) = kube_docs(CLUSTER / "kuberay" / "rayjob.yaml")
    (cluster,) = kube_docs(CLUSTER / "kuberay" / "raycluster.yaml")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1, "retries are how a RayJob resumes after a lost cluster"
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    if "rayClusterSpec" in spec:
        assert spec["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's cluster drifted from raycluster.yaml"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["sdbatch", "submit"] and "--address" in argv


# --------------------------------------------------------------------------- Dockerfile

DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
                           "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
                           "HEALTHCHECK", "SHELL"}


class DockerfileError(ValueError):
    pass


def parse_dockerfile(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) per instruction. Handles parser directives (escape=), comment
    lines (also inside continuations, which Docker drops) and line continuations. No heredocs."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives: only at the very top, before anything else
        match = re.fullmatch(r"#\s*(\w+)\s*=\s*(\S+)\s*", line)
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
    instructions, pending, start = [], None, 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, inside continuations too
        if pending is None:
            pending, start = "", number
        continued = stripped.endswith(escape)
        pending += (stripped[:-len(escape)].rstrip() if continued else stripped) + " "
        if not continued:
            instructions.append((start, pending.strip()))
            pending = None
    if pending is not None:
        raise DockerfileError(f"line {start}: the last instruction ends in a line continuation")
    parsed = []
    for number, logical in instructions:
        word, _, args = logical.partition(" ")
        if word.upper() not in DOCKERFILE_INSTRUCTIONS:
            raise DockerfileError(f"line {number}: unknown instruction {word!r}")
        if word != word.upper():
            raise DockerfileError(f"line {number}: write instructions in upper case ({word})")
        if "<<" in args and word.upper() in ("RUN", "COPY", "ADD"):
            raise DockerfileError(f"line {number}: heredocs are not handled by this parser")
        parsed.append((number, word.upper(), args.strip()))
    seen_from = False
    for number, word, _ in parsed:
        if word == "FROM":
            seen_from = True
        elif not seen_from and word != "ARG":
            raise DockerfileError(f"line {number}: {word} before the first FROM (only ARG may precede it)")
    if not seen_from:
        raise DockerfileError("no FROM")
    return parsed


def test_dockerfile_parses_and_is_shaped_for_the_cluster():
    parsed = parse_dockerfile((INFRA / "Dockerfile").read_text())
    words = [w for _, w, _ in parsed]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for _, w, a in parsed if w == "ARG" and "=" in a}
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parsed[words.index("FROM")][2])
    assert base.startswith("rayproject/ray:"), base
    # The image's Ray is the one KubeRay is told about (rayVersion) and the one clients must match.
    ray_version = base.split(":")[1].split("-")[0]
    for path in KUBE_MANIFESTS:
        for doc in kube_docs(path):
            cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
            assert cluster["rayVersion"] == ray_version, path.name
    env = " ".join(a for _, w, a in parsed if w == "ENV")
    assert "SDBATCH_CACHE=/models/sdbatch" in env and "HF_HOME=/models/hf" in env
    volumes = [json.loads(a) if a.startswith("[") else a.split() for _, w, a in parsed if w == "VOLUME"]
    assert ["/models"] in volumes
    users = [a for _, w, a in parsed if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    workdirs = [a for _, w, a in parsed if w == "WORKDIR"]
    assert workdirs and workdirs[-1].rstrip("/") + "/" == IMAGE_ROOT


def test_dockerfile_copies_exist_and_pass_its_dockerignore():
    parsed = parse_dockerfile((INFRA / "Dockerfile").read_text())
    allowed = {line[1:].rstrip("/") for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copies = [shlex.split(a) for _, w, a in parsed if w in ("COPY", "ADD")]
    assert copies
    for argv in copies:
        paths = [a for a in argv if not a.startswith("--")]
        if any(a.startswith("--from") for a in argv):
            continue
        for source in paths[:-1]:  # the build context is the repository root
            assert (REPO / source).exists(), f"COPY source {source} missing"
            assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"


@pytest.mark.parametrize("good,bad", [("WORKDIR /opt/sdbatch", "WORKDIRR /opt/sdbatch"),
                                      ("VOLUME [\"/models\"]", "VOLUMES [\"/models\"]")])
def test_dockerfile_misspelled_instruction_is_caught(good, bad):
    text = (INFRA / "Dockerfile").read_text()
    assert good in text
    with pytest.raises(DockerfileError, match="unknown instruction"):
        parse_dockerfile(text.replace(good, bad))


def test_dockerfile_parser_handles_continuations_and_order():
    text = ("# syntax=docker/dockerfile:1\nARG BASE=x\nFROM ${BASE}\nRUN a \\\n# a comment inside\n"
            "    && b \\\n    && c\nENV A=1 \\\n    B=2\n")
    assert [(w, a) for _, w, a in parse_dockerfile(text)] == [
        ("ARG", "BASE=x"), ("FROM", "${BASE}"), ("RUN", "a && b && c"), ("ENV", "A=1 B=2")]
    assert [w for _, w, _ in parse_dockerfile("# escape=`\nFROM x\nRUN a `\n  b\n")] == ["FROM", "RUN"]
    with pytest.raises(DockerfileError, match="before the first FROM"):
        parse_dockerfile("RUN echo\nFROM x\n")
    with pytest.raises(DockerfileError, match="continuation"):
        parse_dockerfile("FROM x\nRUN a \\\n")
    with pytest.raises(DockerfileError, match="unknown instruction"):
        parse_dockerfile("FROM x\nRUN a\n  && b\n")  # a forgotten backslash


# --------------------------------------------------------------------------- compose

COMPOSE_TOP = {"version", "name", "services", "networks", "volumes", "secrets", "configs", "include", "models"}
COMPOSE_SERVICE = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
    "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "driver_opts", "entrypoint", "env_file", "environment", "expose", "extends", "external_links",
    "extra_hosts", "gpus", "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation",
    "label_file", "labels", "links", "logging", "mac_address", "mem_limit", "mem_reservation",
    "mem_swappiness", "memswap_limit", "models", "network_mode", "networks", "oom_kill_disable",
    "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged",
    "profiles", "provider", "pull_policy", "read_only", "restart", "runtime", "scale", "secrets",
    "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls",
    "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes", "volumes_from",
    "working_dir"}
COMPOSE_NESTED = {
    "build": {"context", "dockerfile", "dockerfile_inline", "args", "ssh", "cache_from", "cache_to",
              "additional_contexts", "entitlements", "extra_hosts", "isolation", "labels", "network",
              "no_cache", "platforms", "privileged", "pull", "secrets", "shm_size", "tags", "target",
              "ulimits", "provenance", "sbom"},
    "healthcheck": {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"},
    "deploy": {"mode", "replicas", "endpoint_mode", "labels", "placement", "resources", "restart_policy",
               "rollback_config", "update_config"},
}


def compose_errors(doc: dict) -> list[str]:
    errors = [f"top-level key {k!r}" for k in doc if k not in COMPOSE_TOP and not k.startswith("x-")]
    services = doc.get("services", {})
    for name, service in services.items():
        errors += [f"{name}: key {k!r}" for k in service if k not in COMPOSE_SERVICE and not k.startswith("x-")]
        for key, allowed in COMPOSE_NESTED.items():
            if isinstance(service.get(key), dict):
                errors += [f"{name}.{key}: key {k!r}" for k in service[key] if k not in allowed]
        depends = service.get("depends_on", {})
        for target, condition in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            if target not in services:
                errors.append(f"{name}: depends on unknown service {target!r}")
            if isinstance(condition, dict):
                errors += [f"{name}.depends_on.{target}: key {k!r}" for k in condition
                           if k not in ("condition", "restart", "required")]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in (doc.get("volumes") or {}):
                errors.append(f"{name}: named volume {source!r} is not declared")
    return errors


COMPOSE_FILES = sorted(INFRA.glob("compose*.yaml"))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids(COMPOSE_FILES))
def test_compose_keys(path):
    doc = load_yaml(path)
    if path.name != "compose.yaml":  # an override: judged merged onto the base
        base = load_yaml(INFRA / "compose.yaml")
        for name, service in doc["services"].items():
            assert name in base["services"], f"{path.name} overrides unknown service {name}"
            base["services"][name].update(service)
        doc = base
    assert compose_errors(doc) == []


def test_compose_stack():
    doc = load_yaml(INFRA / "compose.yaml")
    services = doc["services"]
    assert {"s3", "head", "worker"} <= set(services)
    for name in ("head", "worker"):
        service = services[name]
        assert service["build"]["dockerfile"] == "infra/Dockerfile"
        assert (INFRA / service["build"]["context"]).resolve() == REPO
        assert service["env_file"] == ".env" and "models:/models" in service["volumes"]
        for key in service.get("environment", {}):
            assert not SECRET_NAME.search(key), f"{name}: {key} belongs in .env, not compose.yaml"
    head, worker = " ".join(services["head"]["command"]), " ".join(services["worker"]["command"])
    assert "--head" in head and "--block" in head and "--dashboard-host=0.0.0.0" in head
    assert any(str(p).endswith("8265:8265") for p in services["head"]["ports"])
    assert "--address=head:6379" in worker and "--block" in worker
    assert services["worker"]["depends_on"]["head"]["condition"] == "service_healthy"
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(example)


@pytest.mark.parametrize("service,old,new", [("head", "command", "comand"), ("worker", "depends_on", "depends_onn"),
                                             ("s3", "healthcheck", "healthchek")])
def test_compose_misspelling_is_caught(service, old, new):
    doc = renamed(load_yaml(INFRA / "compose.yaml"), ["services", service], old, new)
    assert any(repr(new) in e for e in compose_errors(doc))
    nested = renamed(load_yaml(INFRA / "compose.yaml"), ["services", "s3", "healthcheck"], "retries", "retry")
    assert any("'retry'" in e for e in compose_errors(nested))


# --------------------------------------------------------------------------- bucket and IAM JSON

def test_lifecycle_rule_is_a_valid_put_bucket_lifecycle_configuration():
    import botocore.session
    from botocore.validate import ParamValidator

    op = botocore.session.get_session().get_service_model("s3").operation_model("PutBucketLifecycleConfiguration")
    doc = json.loads((INFRA / "bucket" / "lifecycle.json").read_text())
    params = {"Bucket": "b", "LifecycleConfiguration": doc}
    assert not ParamValidator().validate(params, op.input_shape).has_errors()
    assert any(r["Status"] == "Enabled" and r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] > 0
               for r in doc["Rules"])
    bad = {"Bucket": "b", "LifecycleConfiguration": renamed(doc, ["Rules", 0], "AbortIncompleteMultipartUpload",
                                                               "AbortIncompleteMultipartUploads")}
    assert "AbortIncompleteMultipartUploads" in ParamValidator().validate(bad, op.input_shape).generate_report()


# IAM action names that are not API operation names.
IAM_ONLY_ACTIONS = {"s3:ListBucket", "iam:PassRole"}
IAM_POLICIES = sorted(p for p in INFRA.glob("*/*.json") if p.name != "lifecycle.json")


def iam_errors(policy: dict) -> list[str]:
    import botocore.session

    session, errors = botocore.session.get_session(), []
    if policy.get("Version") != "2012-10-17":
        errors.append("Version must be 2012-10-17")
    for n, statement in enumerate(policy.get("Statement", [])):
        unknown = set(statement) - {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                                    "Principal", "NotPrincipal", "Condition"}
        errors += [f"statement {n}: key {k!r}" for k in sorted(unknown)]
        if statement.get("Effect") not in ("Allow", "Deny"):
            errors.append(f"statement {n}: Effect {statement.get('Effect')!r}")
        actions = statement.get("Action", [])
        for action in [actions] if isinstance(actions, str) else actions:
            service, _, name = action.partition(":")
            if action in IAM_ONLY_ACTIONS or service == "sts":
                continue
            operations = session.get_service_model(service).operation_names
            if not fnmatch.filter(operations, name):
                errors.append(f"statement {n}: no {service} action {name!r}")
        for resource in [statement.get("Resource", [])] if isinstance(statement.get("Resource"), str) \
                else statement.get("Resource", []):
            if resource != "*" and not resource.startswith("arn:aws:"):
                errors.append(f"statement {n}: resource {resource!r}")
    return errors


@pytest.mark.parametrize("path", IAM_POLICIES, ids=ids(IAM_POLICIES))
def test_iam_policy_documents(path):
    doc = json.loads(path.read_text())
    assert iam_errors(doc) == []
    typo = copy.deepcopy(doc)
    statement = typo["Statement"][0]
    first = statement["Action"] if isinstance(statement["Action"], str) else statement["Action"][0]
    if not first.startswith("sts:"):
        service, _, name = first.partition(":")
        statement["Action"] = f"{service}:zz{name}"
        assert any("no " in e for e in iam_errors(typo)), first


def test_bucket_policy_is_limited_to_one_prefix():
    policy = json.loads((INFRA / "bucket" / "policy.json").read_text())
    by_action = {}
    for statement in policy["Statement"]:
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            by_action[action] = statement
    assert set(by_action) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert by_action[action]["Resource"] == "arn:aws:s3:::YOUR_BUCKET/YOUR_PREFIX/*"
    listing = by_action["s3:ListBucket"]
    assert listing["Resource"] == "arn:aws:s3:::YOUR_BUCKET"
    assert "YOUR_PREFIX/*" in listing["Condition"]["StringLike"]["s3:prefix"]


def test_no_credentials_in_deployment_files():
    patterns = [re.compile(p) for p in (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                                        r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}\b")]
    for path in [*CLUSTER.rglob("*"), *INFRA.rglob("*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not [p.pattern for p in patterns if p.search(text)], path


# --------------------------------------------------------------------------- commands

def code_block_lines(markdown: str) -> list[str]:
    """Shell lines of the fenced code blocks (bash, sh, shell or unlabelled), continuations joined."""
    lines, block, joined = [], None, ""
    for line in markdown.splitlines():
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block is None or block not in ("", "bash", "sh", "shell", "console"):
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        lines.append(joined + line)
        joined = ""
    return [line.strip() for line in lines if line.strip()]


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at ; && || | and redirections; comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|<>"):
            if current:
                commands.append(current)
            current = ["__redirect__"] if token[0] in "<>" else []
            continue
        if current == ["__redirect__"]:
            current = []  # the redirection target
            continue
        current.append(token)
    if current and current != ["__redirect__"]:
        commands.append(current)
    return commands


def _cli_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, normal exits) of click and of the click fork that newer typer vendors."""
    usage, exits = [click.ClickException], [click.exceptions.Exit]
    try:
        from typer import exceptions as typer_exceptions
        from typer._click import exceptions as typer_click
    except ImportError:
        pass
    else:
        usage.append(typer_click.ClickException)
        exits.append(typer_exceptions.Exit)
    return tuple(usage), tuple(exits)


def click_check(root, argv: list[str], program: str) -> None:
    """Resolve subcommands, then let the command's own parser take the rest: unknown flags, missing
    or extra arguments and bad values raise its UsageError / BadParameter."""
    usage_errors, exits = _cli_errors()
    command, path = root, [program]
    while isinstance(getattr(command, "commands", None), dict):  # a group (click's or typer's fork)
        assert argv, f"{' '.join(path)}: a subcommand is missing"
        name, argv = argv[0], argv[1:]
        assert name in command.commands, f"{' '.join(path)} has no subcommand {name!r}"
        command, path = command.commands[name], path + [name]
    try:
        command.make_context(" ".join(path), list(argv), resilient_parsing=False)
    except exits:
        pass
    except usage_errors as exc:
        raise AssertionError(f"{' '.join(path + argv)}: {exc.format_message()}") from None


@functools.cache
def sdbatch_cli():
    import typer

    from sdbatch.cli.app import app

    return typer.main.get_command(app)


@functools.cache
def ray_cli():
    from ray.scripts.scripts import cli

    return cli


AWS_GLOBAL_FLAGS = {"--region", "--profile", "--output", "--query", "--endpoint-url", "--no-cli-pager",
                    "--debug", "--no-verify-ssl"}


def aws_check(argv: list[str]) -> None:
    """`aws SERVICE OPERATION --param ...` against botocore's service model (s3api is s3)."""
    import botocore.session

    service, operation = argv[0], argv[1]
    model = botocore.session.get_session().get_service_model("s3" if service == "s3api" else service)
    pascal = {re.sub(r"[^a-z0-9]", "", name.lower()): name for name in model.operation_names}
    name = pascal.get(operation.replace("-", ""))
    assert name, f"aws {service} has no operation {operation}"
    members = {m.lower() for m in model.operation_model(name).input_shape.members}
    for flag in (a for a in argv[2:] if a.startswith("--")):
        flag = flag.split("=", 1)[0]
        assert flag in AWS_GLOBAL_FLAGS or flag[2:].replace("-", "") in members, f"aws {service} {operation} {flag}"


def check_paths(argv: list[str]) -> None:
    """Repository files a command names exist (paths in the image map back to the repository)."""
    for token in argv:
        token = token.split("=", 1)[-1].removeprefix("file://")
        if token.startswith(IMAGE_ROOT):
            token = token[len(IMAGE_ROOT):]
        elif not token.startswith(("cluster/", "infra/", "jobs/", "manifests/")):
            continue
        assert (REPO / token).exists(), f"{token} does not exist in the repository"


def check_command(argv: list[str]) -> str | None:
    """Check one simple command; returns what it was checked as, or None if it is not ours to check."""
    while argv and re.fullmatch(r"\w+=.*", argv[0]):
        argv = argv[1:]  # VAR=value prefixes
    if not argv:
        return None
    if argv[0] == "docker":
        check_paths(argv)  # -f infra/compose.yaml, -f infra/Dockerfile
        if argv[1:2] == ["compose"] and "exec" in argv:
            rest = argv[argv.index("exec") + 1:]
            while rest and rest[0].startswith("-"):
                rest = rest[1:]
            return check_command(rest[1:]) if len(rest) > 1 else None  # after the service name
        return "docker"
    if argv[0] == "sdbatch":
        check_paths(argv)
        click_check(sdbatch_cli(), argv[1:], "sdbatch")
        return "sdbatch"
    if argv[0] == "ray":
        check_paths(argv)
        click_check(ray_cli(), argv[1:], "ray")
        if argv[1:3] == ["job", "submit"] and "--" in argv:
            check_command(argv[argv.index("--") + 1:])  # the entrypoint
        return "ray"
    if argv[0] in ("aws", "kubectl", "sed"):
        check_paths(argv)  # file://infra/..., -f cluster/kuberay/...
        if argv[0] == "aws" and len(argv) > 2 and argv[1] not in ("s3", "ecr"):  # s3, ecr: CLI customizations
            aws_check(argv[1:])
            return "aws"
    return None


def test_rayjob_entrypoint_is_a_real_sdbatch_command():
    for path in KUBE_MANIFESTS:
        for doc in kube_docs(path):
            if doc["kind"] == "RayJob":
                assert check_command(shlex.split(doc["spec"]["entrypoint"])) == "sdbatch"


@pytest.mark.parametrize("path", READMES, ids=ids(READMES))
def test_readme_commands_exist(path):
    checked = [what for line in code_block_lines(path.read_text()) for argv in shell_commands(line)
               if (what := check_command(argv))]
    assert "sdbatch" in checked, f"no sdbatch command found in {path.name}: the extraction is broken"


@pytest.mark.parametrize("argv,message", [
    (["sdbatch", "submitt", "m.parquet"], "no subcommand 'submitt'"),
    (["sdbatch", "submit", "m.parquet", "--output", "s3://b/r", "--adress", "auto"], "No such option"),
    (["sdbatch", "submit", "m.parquet"], "Missing option"),
    (["sdbatch", "status"], "Missing argument"),
    (["sdbatch", "submit", "m.parquet", "-o", "s3://b/r", "--steps", "many"], "many"),
    (["ray", "job", "submit", "--adress", "http://h:8265", "--", "sdbatch", "status", "s3://b/r"], "No such option"),
    (["ray", "job", "submit", "--", "sdbatch", "status", "s3://b/r", "--folow"], "No such option"),
    (["ray", "up", "-y", "cluster/gone.yaml"], "does not exist"),
    (["aws", "s3api", "put-bucket-lifecycle-configuraton", "--bucket", "b"], "no operation"),
    (["aws", "iam", "put-role-policy", "--role-name", "r", "--policy-nam", "p"], "--policy-nam"),
    (["sdbatch", "submit", "m", "-o", "s3://b/r", "--job", "/opt/sdbatch/jobs/nope.toml"], "does not exist"),
])
def test_command_check_catches_mistakes(argv, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_command(argv)


def test_shell_line_splitting():
    assert shell_commands("sed -e 's/a/b/' x.json > /tmp/y.json && aws iam get-role --role-name r  # c") == [
        ["sed", "-e", "s/a/b/", "x.json"], ["aws", "iam", "get-role", "--role-name", "r"]]
    assert code_block_lines("x\n```bash\na \\\n  b\n```\n```python\nsdbatch\n```\n") == ["a    b"]
