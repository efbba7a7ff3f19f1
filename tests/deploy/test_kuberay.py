"""KubeRay RayCluster and RayJob manifests (cluster/kuberay/) against the CRDs' schemas, made strict.

The CRDs' openAPIV3Schema come from ../shared/schemas/kuberay (read at test time, never copied; the checks skip
where it is absent), made strict like `kubeconform -strict`: unknown fields are errors. Every check has a twin
that misspells something in a copy and expects the error.
"""

from __future__ import annotations

import copy
import functools
import json
import shlex

import jsonschema
import pytest
import yaml

from tests.support.deploy import CLUSTER, IMAGE, KUBE_MANIFESTS, KUBERAY_SCHEMAS, SECRET_NAME, ids, kube_docs, renamed

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
