"""pyproject.toml (pip) and environment.yml (conda) name the same packages and versions."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, req
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_agrees_with_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = dict(_split(r) for r in meta["dependencies"] + meta["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"unexpected entry {dep!r}"
        name, spec = _split(dep)
        if name in CONDA_ONLY:
            continue
        conda[CONDA_TO_PYPI.get(name, name)] = spec
    assert conda == pip


def test_torch_is_a_range_in_metadata_and_pinned_only_in_constraints():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in meta["dependencies"] if r.startswith("torch>"))
    assert "==" not in torch_req
    constraints = (ROOT / "constraints.txt").read_text()
    assert 'torch==2.14.1 ; platform_machine == "x86_64"' in constraints
