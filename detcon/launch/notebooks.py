"""The notebooks a launch runs: where they are, their ``parameters`` cell (checked against what
a point passes, since papermill only warns about an unknown parameter), the kernel and rendering
to HTML."""

from __future__ import annotations

import ast
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detcon.atomic import write_text
from detcon.config import did_you_mean

# The checkout: notebooks/, ablations/clusters/ and the git state a point's env.json records.
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
EVALUATE_NOTEBOOK = "evaluate"
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
}


def notebook_path(name: str, relative_to: Path | None = None) -> Path:
    """``pretrain`` -> ``<repo>/notebooks/pretrain.ipynb``; a name ending in ``.ipynb`` is a path
    (relative to ``relative_to``, the ablation file's folder)."""
    if name.endswith(".ipynb"):
        path = Path(name)
        return path if path.is_absolute() or relative_to is None else relative_to / path
    return NOTEBOOK_DIR / f"{name}.ipynb"


def notebook_parameters(path: Path) -> dict[str, dict[str, Any]]:
    """The parameters of the notebook's ``parameters`` cell (papermill's inspection).

    Raises:
        FileNotFoundError: no such notebook.
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    import nbformat
    import papermill

    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    nb = nbformat.read(path, as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(
            f"notebook {path} has no cell tagged 'parameters': papermill needs one to inject a "
            "point's values (tag the cell that assigns the defaults)"
        )
    return dict(papermill.inspect_notebook(str(path)))


def _declared_type(param: Mapping[str, Any]) -> str | None:
    """Type name of a notebook parameter: its annotation, else its default's literal type."""
    name = str(param.get("inferred_type_name"))
    if name in _PY_TYPES:
        return name
    try:
        value = ast.literal_eval(str(param.get("default")))
    except (ValueError, SyntaxError):
        return None
    name = type(value).__name__
    return name if name in _PY_TYPES else None


def check_parameters(path: Path, *given: Mapping[str, Any]) -> None:
    """Reject parameters ``path`` does not declare (papermill only warns) or of the wrong type,
    in each of ``given`` (one mapping per point; the notebook is inspected once).

    Raises:
        ValueError: naming the parameter and the notebook's parameters.
    """
    declared = notebook_parameters(path)
    types = {n: _declared_type(p) for n, p in declared.items()}
    listing = ", ".join(f"{n} ({types[n] or 'any'})" for n in declared)
    for name, value in (item for params in given for item in params.items()):
        if name not in declared:
            raise ValueError(
                f"notebook {path.name} has no parameter {name!r}{did_you_mean(name, declared)}; "
                "its parameters: "
                f"{listing or 'none'}"
            )
        expected = types[name]
        if expected is None:
            continue
        allowed = _PY_TYPES[expected]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(
                f"notebook {path.name}: parameter {name}={value!r} has type "
                f"{type(value).__name__}, expected {expected} (the type of its default)"
            )


def _runs_this_python(program: str) -> bool:
    """Whether a kernel whose program is ``program`` runs this process's interpreter."""
    major, minor = sys.version_info[:2]
    if program in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True  # jupyter_client starts a bare "python..." with sys.executable
    if sys.prefix != sys.base_prefix:  # a venv: every venv's python links to one base interpreter
        return Path(program).absolute().parent == Path(sys.executable).absolute().parent
    return os.path.realpath(program) == os.path.realpath(sys.executable)


def kernel_name() -> str:
    """``detcon-venv`` (installed by ``make install``) when it runs this Python, else ``python3``.

    Raises:
        RuntimeError: neither kernel runs this process's interpreter (a user-level kernelspec,
            common on clusters with JupyterHub, takes precedence over the environment's own; a
            ``detcon-venv`` registered from another checkout's venv): the notebooks would import
            another environment's packages.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    programs = {}
    for name in ("detcon-venv", "python3"):
        try:
            argv = manager.get_kernel_spec(name).argv
        except KeyError:  # jupyter_client's NoSuchKernel
            continue
        programs[name] = argv[0] if argv else ""
        if _runs_this_python(programs[name]):
            return name
    if not programs:  # papermill says what is missing when it starts the kernel
        return "python3"
    runs = "; ".join(f"the Jupyter kernel '{n}' runs {p}" for n, p in programs.items())
    raise RuntimeError(
        f"{runs}, not this Python ({sys.executable}): the notebooks would import another "
        "environment's packages; register this environment's kernel: "
        f"{sys.executable} -m ipykernel install --sys-prefix --name detcon-venv"
    )


def execute_notebook(
    notebook: Path, output: Path, parameters: Mapping[str, Any], *, cwd: Path, kernel: str
) -> None:
    """Execute ``notebook`` with papermill into ``output``, ``parameters`` injected after its
    ``parameters`` cell, in ``cwd``.

    Raises:
        papermill.PapermillExecutionError: a cell failed (``output`` holds the notebook so far).
    """
    import papermill

    _hush_interrupted_teardown()
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=dict(parameters),
        kernel_name=kernel,
        progress_bar=False,
        cwd=str(cwd),
        # ipykernel >= 7 warns on every start that its local TCP sockets are unencrypted: noise
        # in every point's log. Errors still show; the notebook's own output is unaffected.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        # Stop the kernel at once (interrupt, then kill its process group) instead of asking it
        # to shut down: after Ctrl-C the kernel is still running a cell, and the polite request
        # closes its sockets under that cell's reply (a ZMQError traceback on the terminal).
        # After the last cell every output has arrived, so nothing is lost either way.
        shutdown_kernel="immediate",
    )


class _InterruptedTeardown(logging.Filter):
    """Drops what papermill's kernel teardown logs after Ctrl-C, which only repeats the interrupt.

    Ctrl-C raises KeyboardInterrupt in the event loop that runs a cell and leaves nbclient's
    tasks for that cell pending in it. The teardown (``shutdown_kernel="immediate"``) runs that
    loop again: when it takes longer than nbclient's one-second kernel poll (a loaded machine),
    the poll sees the stopped kernel, logs "Kernel died while waiting for execute reply." and
    the cell's task ends with a DeadKernelError nobody retrieves, which asyncio logs with a
    traceback when the task is collected (at exit). The caller prints one line for the
    interrupt (``detcon run: interrupted``); these records would follow it on the terminal.
    Records are dropped only while a KeyboardInterrupt unwinds (papermill's logger) or after
    such a drop (asyncio's DeadKernelError); everything else passes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio":
            from nbclient.exceptions import DeadKernelError

            exc = record.exc_info[1] if record.exc_info else None
            return not (self.interrupted and isinstance(exc, DeadKernelError))
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            self.interrupted = True
            return False
        return True


_TEARDOWN_FILTER = _InterruptedTeardown()


def _hush_interrupted_teardown() -> None:
    """Attach :class:`_InterruptedTeardown` to papermill's and asyncio's loggers (once)."""
    for name in ("papermill", "asyncio"):
        logger = logging.getLogger(name)
        if _TEARDOWN_FILTER not in logger.filters:
            logger.addFilter(_TEARDOWN_FILTER)


def render_html(notebook: Path) -> Path:
    """Render an executed notebook to ``<notebook>.html`` next to it (atomic)."""
    import nbconvert

    body, _ = nbconvert.HTMLExporter().from_filename(str(notebook))
    return write_text(notebook.with_suffix(".html"), body)
