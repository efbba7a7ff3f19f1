"""Commands in the RayJob entrypoint and the READMEs' code blocks, checked without running them.

sdbatch and ray commands are parsed by their own click apps (subcommands and every flag), aws commands against
botocore's models. Every check has a twin that misspells something in a copy and expects the error.
"""

from __future__ import annotations

import functools
import re
import shlex

import click
import pytest

from tests.support.deploy import IMAGE_ROOT, KUBE_MANIFESTS, READMES, ids, kube_docs
from tests.support.util import REPO


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
