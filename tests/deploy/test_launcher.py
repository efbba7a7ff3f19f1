"""Ray cluster launcher YAML (cluster/*.yaml) checked as `ray up` would, and its AWS node_config as EC2 would.

Ray's own `prepare_config` + `validate_config` (ray/autoscaler/ray-schema.json), and AWS `node_config` against
botocore's EC2 RunInstances input shape (Ray passes it through unchecked, so a misspelled EC2 key would only fail
at launch time). Every check has a twin that misspells something in a copy and expects the error.
"""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests.support.deploy import IMAGE, LAUNCHER_CONFIGS, ids, load_yaml, renamed

# What the launcher must declare for each instance type it uses (the autoscaler plans with it).
INSTANCE_RESOURCES = {"m6i.2xlarge": (8, 0), "g5.xlarge": (4, 1), "g6e.xlarge": (4, 1),
                      "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8)}


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
