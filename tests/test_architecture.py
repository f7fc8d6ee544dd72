"""The import direction of ARCHITECTURE.md, enforced: every import (module level or inside a
function) between the project's packages must point to a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lcm", "encoders", "diffusion", "eval", "experiments")

#: Layer of each unit (a top-level package, or a sub-package / module of ``lcm``). A unit may
#: import only units of a strictly lower layer (and itself).
LAYERS: dict[str, int] = {
    "diffusion": 0,
    "encoders": 0,
    "lcm": 0,  # lcm/__init__.py
    "lcm.nn": 0,
    "lcm.normalizer": 0,
    "lcm.splitting": 0,
    "lcm.metrics": 0,
    "lcm.quant": 0,
    "lcm.progress": 0,
    "lcm.models": 1,
    "lcm.data": 1,
    "lcm.corpora": 1,
    "lcm.objectives": 2,
    "lcm.train": 3,
    "lcm.generation": 3,
    "lcm.api": 4,
    "lcm.apps": 5,
    "eval": 5,
    "lcm.cli": 6,
    "lcm.demo": 7,  # the main job drives the CLI as a user would
    "experiments": 8,
}


def unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "lcm" and len(parts) > 1:
        name = "lcm." + parts[1]
        return "lcm.demo" if name.startswith("lcm.demo") else name
    return parts[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return out


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_unit_has_a_layer():
    missing = sorted({unit(module_name(p)) for p in sources()} - set(LAYERS))
    assert not missing, f"add these to LAYERS (and to ARCHITECTURE.md): {missing}"


def test_imports_point_down_only():
    wrong = []
    for path in sources():
        src = unit(module_name(path))
        for line, target in project_imports(path):
            dst = unit(target)
            if dst != src and LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} {src} -> {target}")
    assert not wrong, "imports against the layering of ARCHITECTURE.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("forbidden", ["eval", "experiments"])
def test_core_never_imports_eval_or_experiments(forbidden):
    core = [p for p in sources() if LAYERS[unit(module_name(p))] <= 4]
    hits = [
        f"{p.relative_to(ROOT)}:{line} {t}"
        for p in core
        for line, t in project_imports(p)
        if t.split(".")[0] == forbidden
    ]
    assert not hits, hits


def test_the_scan_sees_function_level_imports(tmp_path):
    """The checker itself: an import inside a function counts."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from eval.run import main\n")
    assert project_imports(f) == [(2, "eval.run")]
