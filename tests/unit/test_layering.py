"""The module boundaries the architecture promises: torch only under render/, ray only under engine/, no cycles,
model families asked only of their owner."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.util import REPO

PACKAGE = REPO / "sdbatch"
HEAVY = {"torch", "diffusers", "transformers"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` names the module a.b.c when there is one, else a.b.
            names |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return names


def _top_levels(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imported(path)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_the_package_modules_counting_imports_inside_functions():
    graph = {name: {m for m in _imported(path) if m in MODULES} for name, path in MODULES.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]] and _cycles({"a": {"b"}, "b": set()}) == []


# The layers, top first: a module imports only from its own layer or those below it (docs/ARCHITECTURE.md).
# The base is the top-level modules and a1111/.
LAYERS = ("cli", "run", "engine", "render", "plan", "manifest", "output", "store", "base")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if LAYERS.index(_layer(t)) < LAYERS.index(_layer(m)))


def test_imports_only_go_down_the_layers():
    graph = {name: {m for m in _imported(path) if m in MODULES and m != "sdbatch"}
             for name, path in MODULES.items() if name not in ("sdbatch", "sdbatch.__main__")}
    assert _upward(graph) == []


def test_the_layer_check_sees_an_import_going_up():
    assert _upward({"sdbatch.output.job": {"sdbatch.render.renderer", "sdbatch.store.base"}}) == [
        "sdbatch.output.job -> sdbatch.render.renderer"]
    assert _layer("sdbatch.a1111.syntax") == _layer("sdbatch.spec") == "base"


def test_ray_is_imported_only_under_engine():
    offenders = [name for name, path in MODULES.items() if not name.startswith("sdbatch.engine")
                 and "ray" in _top_levels(path)]
    assert offenders == []


def test_torch_and_diffusers_are_imported_only_under_render():
    offenders = [name for name, path in MODULES.items() if not name.startswith("sdbatch.render")
                 and HEAVY & _top_levels(path)]
    assert offenders == []


# A string that starts with a URI scheme: which schemes exist and what they are is store/'s to say.
SCHEME_LITERAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _scheme_literals(source: str) -> list[str]:
    """String constants (f-string parts too) that start with a URI scheme."""
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SCHEME_LITERAL.match(node.value)]


def test_only_the_store_package_holds_uri_scheme_literals():
    offenders = {name: _scheme_literals(path.read_text()) for name, path in MODULES.items()
                 if not name.startswith("sdbatch.store")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_scheme_literal_check_sees_one_in_an_fstring_and_not_in_a_message():
    assert sorted(_scheme_literals('x = f"s3://{bucket}/k"\ny = "http://host"')) == ["http://host", "s3://"]
    assert _scheme_literals('m = "use an s3:// URI"\nr = re.compile(r"^https?://")') == []


def _loaded_by(module: str) -> set[str]:
    """The top-level packages importing `module` loads, in a fresh interpreter: transitive, as a user pays."""
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    return set(out.stdout.split())


# What each light module may never pull in, however indirectly (a module it imports importing torch counts).
LIGHT = {
    "sdbatch.plan.shards": HEAVY | {"ray", "boto3"},
    "sdbatch.engine.policy": HEAVY | {"ray", "boto3"},
    "sdbatch.engine.watch": HEAVY | {"ray", "pyarrow", "boto3"},
    "sdbatch.engine.dispatch": HEAVY,
    "sdbatch.output.heartbeat": HEAVY | {"ray", "pyarrow", "boto3"},
    "sdbatch.manifest.normalize": HEAVY | {"ray"},
    "sdbatch.run.estimate": HEAVY | {"ray"},
    # The driver's planning and the readers of big runs: no torch, no Ray, boto3 only for s3:// (lazily).
    "sdbatch.plan.planned": HEAVY | {"ray", "boto3"},
    "sdbatch.output.commits": HEAVY | {"ray", "boto3"},
    "sdbatch.output.results": HEAVY | {"ray", "boto3"},
    "sdbatch.run.gallery": HEAVY | {"ray", "boto3"},
    "sdbatch.errors": HEAVY | {"ray", "pyarrow", "boto3"},
    "sdbatch.family": HEAVY | {"ray", "pyarrow", "boto3"},
    "sdbatch.manifest.models": HEAVY | {"ray", "boto3"},
    "sdbatch.settings": HEAVY | {"ray", "pyarrow", "boto3"},
    "sdbatch.cli.app": HEAVY | {"ray"},
    **{f"sdbatch.cli.{name}": HEAVY | {"ray"} for name in
       ("run_cmd", "jobs_cmd", "report_cmd", "manifest_cmd", "models_cmd", "score_cmd", "export_cmd", "options",
        "handler", "progress")},
    # Scores and filters are read by the driver: their declarations and the score files stay torch-free.
    "sdbatch.scores": HEAVY | {"ray", "boto3"},
    "sdbatch.output.scores": HEAVY | {"ray", "boto3"},
    "sdbatch.output.where": HEAVY | {"ray", "boto3"},
    "sdbatch.output.export": HEAVY | {"ray", "boto3"},
    "sdbatch.run.score": HEAVY | {"ray", "boto3"},
    "sdbatch.run.publish": HEAVY | {"ray", "boto3"},
}


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_light_modules_pull_in_nothing_heavy_transitively(module):
    assert _loaded_by(module) & LIGHT[module] == set()


def test_nothing_in_the_output_protocol_pulls_in_torch_or_ray():
    """Readers of a run (results, the gallery, from-images) and the layouts' tests run where no torch is installed."""
    output = sorted(name for name in MODULES if name.startswith("sdbatch.output"))
    assert _loaded_by(", ".join(output)) & (HEAVY | {"ray"}) == set()


def test_the_transitive_check_sees_an_indirect_import():
    assert "torch" in _loaded_by("sdbatch.render.renderer")  # renderer imports torch through its own imports


# Only the family owners may look at what differs between families: render/families/ (and the tiny models it is
# tested on). Elsewhere a UNet attribute, an SDXL test or the second text encoder's name would be a family decided
# outside its owner, and a new family (a transformer instead of a UNet) would break there silently.
FAMILY_OWNERS = ("sdbatch.render.families", "sdbatch.render.tiny")
FAMILY_ATTRIBUTES = {"unet"}
FAMILY_NAMES = {"is_sdxl"}
FAMILY_STRINGS = {"text_encoder_2", "tokenizer_2"}


def _family_offences(source: str) -> list[str]:
    """Where a module's code reads `.unet`, names `is_sdxl`, or spells a second-encoder attribute name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in FAMILY_ATTRIBUTES | FAMILY_NAMES:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Name) and node.id in FAMILY_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, (ast.FunctionDef, ast.alias)) and node.name in FAMILY_NAMES:
            found.append((node.lineno, node.name))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FAMILY_STRINGS:
            found.append((node.lineno, repr(node.value)))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_only_the_family_owners_ask_which_family_a_pipeline_is():
    offenders = {name: _family_offences(path.read_text()) for name, path in MODULES.items()
                 if not name.startswith(FAMILY_OWNERS)}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_family_check_sees_each_kind_of_offence():
    planted = ("def is_sdxl(pipe):\n    return pipe.unet.config\n"
               "from x import is_sdxl\nif is_sdxl(p): getattr(p, 'text_encoder_2'); p.tokenizer = 'tokenizer_2'\n")
    assert _family_offences(planted) == ["line 1: is_sdxl", "line 2: .unet", "line 3: is_sdxl",
                                         "line 4: 'text_encoder_2'", "line 4: 'tokenizer_2'", "line 4: is_sdxl"]
    assert _family_offences("pipe.text_encoder; unet_config = 1; # pipe.unet in a comment\n") == []
