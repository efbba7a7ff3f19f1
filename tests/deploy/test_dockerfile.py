"""The worker image's infra/Dockerfile, read by a small parser: known instructions, FROM first, COPY sources.

The parser handles continuations and comment lines as Docker does. Every check has a twin that misspells
something in a copy and expects the error.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.support.deploy import IMAGE_ROOT, INFRA, KUBE_MANIFESTS, kube_docs
from tests.support.util import REPO

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
