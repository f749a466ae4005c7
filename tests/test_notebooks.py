"""Every notebook under notebooks/: stripped of outputs, a commented ``parameters`` cell that
declares what the launcher injects, the evaluate notebook's references, and (slow) the mask
gallery executes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from detcon.atomic import write_json
from detcon.launch import NOTEBOOK_DIR, kernel_name, notebook_parameters

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# What detcon.launch passes to each notebook (and what a user of the notebook edits).
REQUIRED = {
    "pretrain": {"profile", "overrides", "run_dir", "progress", "max_steps"},
    "evaluate": {
        "run_dir",
        "tasks",
        "profile",
        "quick",
        "random_baseline",
        "supervised_ceiling",
        "data_root",
    },
    "mask_gallery": {"profile", "overrides", "sources", "num_images"},
}


def test_the_launcher_notebooks_exist():
    assert set(REQUIRED) <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_valid(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_reads_like_a_commented_config(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]  # derived values come after it
    lines = [x for x in tagged[0].source.splitlines() if x.strip() and not x.startswith("#")]
    for line in lines:  # `name = literal  # why`
        assignment, _, comment = line.partition("  # ")
        assert comment.strip(), f"parameter line without a comment: {line!r}"
        node = ast.parse(assignment).body[0]
        assert isinstance(node, ast.Assign)
        ast.literal_eval(node.value)
    assert set(notebook_parameters(path)) >= REQUIRED.get(path.stem, set())


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("cpu", ["pretrained", "random", "supervised"]),
        ("paper", ["pretrained", "random"]),  # no supervised recipe: skipped with a note
    ],
)
def test_evaluate_notebook_adds_the_floor_and_the_ceiling(
    tmp_path, monkeypatch, capsys, profile, expected
):
    """The notebook's own code, run in this process with ``evaluate_run`` replaced by a stand-in
    that writes the file it would write (the real evaluation runs in test_launch's end-to-end
    test): ``supervised_ceiling`` evaluates ``backbone="supervised"`` where the profile has a
    recipe, and prints why it does not (instead of failing) where it has none; a diverged probe
    is printed and has no row."""
    import matplotlib.pyplot as plt

    import detcon.evaluate
    from detcon.evaluate import default_out_name

    calls = []

    def evaluate_run(run_dir, *, backbone="pretrained", **kwargs):
        calls.append(backbone)
        value = {"pretrained": 0.5, "random": 0.2, "supervised": 0.8}[backbone]
        results = {"segmentation": {"miou": value}}
        if backbone == "pretrained":  # a probe that diverged: printed, no metric row
            results["depth"] = {"diverged": "non-finite head loss"}
        write_json(Path(run_dir) / default_out_name(backbone), results)
        return results

    monkeypatch.setattr(detcon.evaluate, "evaluate_run", evaluate_run)
    # evaluate_references (the floor and the ceiling) calls it from its own module
    monkeypatch.setattr(detcon.evaluate.run, "evaluate_run", evaluate_run)
    cells = json.loads((NOTEBOOK_DIR / "evaluate.ipynb").read_text())["cells"]
    params, *code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    namespace: dict = {}
    exec(params, namespace)
    namespace |= {"run_dir": str(tmp_path), "profile": profile, "quick": True}
    namespace |= {"random_baseline": True, "supervised_ceiling": True}
    try:
        for source in code:
            exec(source, namespace)
    finally:
        plt.close("all")
    assert calls == expected
    out = capsys.readouterr().out
    assert "pretrained: depth diverged (non-finite head loss)" in out
    columns = {"pretrained", "random init (floor)", "supervised (ceiling)"}
    if profile == "paper":
        columns -= {"supervised (ceiling)"}
        assert "the paper profile has no supervised recipe" in out
    assert set(namespace["table"].columns) == columns
    assert list(namespace["table"].index) == ["segmentation.miou"]


@pytest.mark.slow
def test_mask_gallery_executes(tmp_path):
    import papermill

    out = tmp_path / "gallery.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / "mask_gallery.ipynb"),
        str(out),
        parameters={
            "overrides": {"data.num_images": 2, "data.scene_size": 48, "masks.grid_size": 2},
            "sources": ["grid", "fh", "ground_truth"],
            "num_images": 2,
        },
        kernel_name=kernel_name(),
        progress_bar=False,
        cwd=str(tmp_path),
    )
    nb = nbformat.read(str(out), as_version=4)
    last = nb.cells[-1].outputs
    assert any("image/png" in o.get("data", {}) for o in last)
    table = next(o for o in last if o.output_type == "execute_result")["data"]["text/plain"]
    assert "mean_best_iou" in table and "ground_truth" in table


def test_the_reference_lane_reads_the_evaluate_notebooks_parameters_as_the_notebook_does():
    """``evaluate_point_references`` takes the evaluate notebook's parameters (but ``run_dir``)
    with the notebook's defaults: the launcher's reference lane passes a point's evaluation
    parameters to it, and a name or default that drifted apart would key another cache entry
    (a ceiling trained twice) or fail the lane."""
    import inspect

    from detcon.evaluate import evaluate_point_references

    signature = inspect.signature(evaluate_point_references).parameters
    for name, param in notebook_parameters(NOTEBOOK_DIR / "evaluate.ipynb").items():
        if name == "run_dir":
            continue
        assert name in signature, name
        default = signature[name].default
        if isinstance(default, tuple):  # TASKS; the notebook's default is a list
            default = list(default)
        assert default == ast.literal_eval(param["default"]), name


def test_a_python3_kernel_of_another_interpreter_is_refused(monkeypatch, tmp_path):
    # Without make install's detcon-venv kernel the launcher falls back to 'python3'; a
    # user-level kernelspec of another Python (JupyterHub clusters) takes precedence there, and
    # every point failed with "No module named detcon" or ran another torch.
    import sys
    from types import SimpleNamespace

    from jupyter_client.kernelspec import KernelSpecManager

    def argv(program: str) -> list[str]:
        return [program, "-m", "ipykernel_launcher", "-f", "{connection_file}"]

    specs: dict[str, list[str]] = {"python3": argv("/opt/other/bin/python")}

    def get_kernel_spec(self, name):
        if name not in specs:
            raise KeyError(name)  # as jupyter_client's NoSuchKernel
        return SimpleNamespace(argv=specs[name])

    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", get_kernel_spec)
    with pytest.raises(
        RuntimeError, match=r"'python3' runs /opt/other/bin/python, not this Python.*--sys-prefix"
    ):
        kernel_name()
    for program in ("python", "python3", sys.executable):  # what jupyter_client runs as this one
        specs["python3"] = argv(program)
        assert kernel_name() == "python3"
    specs["detcon-venv"] = argv(sys.executable)
    assert kernel_name() == "detcon-venv"
    # a detcon-venv registered from another checkout's venv (a --user kernelspec): its notebooks
    # could not import this checkout's detcon; the python3 kernel that runs this one is used
    specs["detcon-venv"] = argv("/elsewhere/.venv/bin/python")
    assert kernel_name() == "python3"
    specs["python3"] = argv("/opt/other/bin/python")
    with pytest.raises(RuntimeError, match=r"'detcon-venv' runs /elsewhere/\.venv/bin/python; "):
        kernel_name()
