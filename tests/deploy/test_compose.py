"""The local stack (infra/compose*.yaml): keys against the Compose spec's names, services and wiring.

Every check has a twin that misspells something in a copy and expects the error.
"""

from __future__ import annotations

import pytest

from tests.support.deploy import INFRA, SECRET_NAME, ids, load_yaml, renamed
from tests.support.util import REPO

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
