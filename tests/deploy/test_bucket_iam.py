"""The bucket setup and IAM JSON (infra/*/*.json): lifecycle rule and policies against botocore's models.

Every check has a twin that misspells something in a copy and expects the error.
"""

from __future__ import annotations

import copy
import fnmatch
import json

import pytest

from tests.support.deploy import INFRA, ids, renamed


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
