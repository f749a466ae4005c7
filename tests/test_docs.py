"""docs/design.md is the design reference the code cites, and what it cites must exist.

Comments, docstrings, notebooks, ablation files and docs cite it as ``docs/design.md §N``. Every
such citation must name a numbered heading of the document, and no file may cite the internal
design document it replaced (which users never had). Within the document, the code it names
(``detcon.*`` objects, repository paths) and the rows of docs/deviations.md it points to must
exist, so that a rename or a module split that forgets the document fails here.
"""

import importlib
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
DEVIATIONS = ROOT / "docs" / "deviations.md"
# Spelled in two parts so that this file does not cite either document itself.
CITE = "docs/design.md" + " §"
OLD_CITATION = "DESIGN" + " §"

_HEADING = re.compile(r"^#{2,6}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", re.M)
_SECTION = r"\d+(?:\.\d+)*"
# "docs/design.md §4.2", "... §4.2, §4.9", "... §3.3/§4.11", "... §4.2-4.4", "... §4.2–§4.4".
_CITATION = re.compile(
    rf"docs/design\.md\s+§\s*({_SECTION}(?:\s*(?:[-–]\s*§?|[,/]\s*§)\s*{_SECTION})*)"
)
# A section cited inside the document itself; "paper §5" is the paper's.
_LOCAL_CITATION = re.compile(rf"(?<!paper )§\s*({_SECTION})")
_DOTTED = re.compile(r"\bdetcon(?:\.[A-Za-z_]\w*)+")
_PATH = re.compile(r"`((?:detcon|notebooks|ablations|docs|tests|benchmarks|scripts)/[^`\s<>]*)`")
_DEVIATION = re.compile(r"`deviations\.md`\s+((?:[LA]\d+)(?:\s*,\s*[LA]\d+)*)")
_MAX_BYTES = 5_000_000  # larger files are data (checkpoints, images), not prose


def sections(markdown: str) -> set[str]:
    """Numbers of the numbered headings (``## 4. ...``, ``### 4.6 ...``) of a Markdown text."""
    return set(_HEADING.findall(markdown))


def cited_sections(text: str) -> list[str]:
    """Every section number a text cites as ``docs/design.md §...`` (both ends of a range)."""
    return [n for group in _CITATION.findall(text) for n in re.findall(_SECTION, group)]


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (what a commit would hold); without git, every
    file outside ``.git`` and ``.venv``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
        return [ROOT / n for n in names if (ROOT / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__")]
            files.extend(Path(folder) / n for n in names)
        return files


def _text(path: Path) -> str | None:
    if path.stat().st_size > _MAX_BYTES:
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def test_the_parsers_find_sections_and_citations():
    doc = "# Title\n## 1. One\n### 1.2 Sub\n#### 1.2.3 Deep\n## Unnumbered\nText §9.\n"
    assert sections(doc) == {"1", "1.2", "1.2.3"}
    text = (
        f"see {CITE}4.6. Also ({CITE}4.5, §4.9, §4.11) and {CITE}4.2-4.4, {CITE}4.2–§4.4, "
        f"{CITE}3.3/§4.11; {CITE}2, 3 workers"
    )
    assert cited_sections(text) == [
        *("4.6", "4.5", "4.9", "4.11", "4.2", "4.4", "4.2", "4.4", "3.3", "4.11", "2"),
    ]


def test_no_file_cites_the_old_design_document_or_a_missing_section():
    known = sections(DESIGN.read_text())
    assert {"1", "2", "3", "4", "4.6"} <= known, "docs/design.md lost its numbered headings"
    old, missing = [], []
    for path in repository_files():
        text = _text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            if OLD_CITATION in line:
                old.append(f"{rel}:{lineno}: {line.strip()}")
        missing += [f"{rel}: §{n}" for n in cited_sections(text) if n not in known]
    assert not old, "cite docs/design.md §N instead of the internal document:\n" + "\n".join(old)
    assert not missing, "citations of sections docs/design.md does not have:\n" + "\n".join(missing)


def test_the_design_document_cites_only_its_own_sections():
    text = DESIGN.read_text()
    known = sections(text)
    missing = sorted(set(_LOCAL_CITATION.findall(text)) - known)
    assert not missing, f"docs/design.md cites its own sections {missing}, which it lacks"


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("dotted", sorted(set(_DOTTED.findall(DESIGN.read_text()))) or ["detcon"])
def test_the_code_the_design_document_names_exists(dotted):
    assert _resolve(dotted), f"docs/design.md names {dotted}, which does not exist"


def test_the_paths_and_deviation_rows_the_design_document_names_exist():
    text = DESIGN.read_text()
    paths = sorted(set(_PATH.findall(text)))
    assert paths, "expected the document to name files"
    assert not [p for p in paths if not (ROOT / p).exists()]
    rows = set(re.findall(r"^\|\s*([LA]\d+)\s*\|", DEVIATIONS.read_text(), re.M))
    cited = {r for group in _DEVIATION.findall(text) for r in re.findall(r"[LA]\d+", group)}
    assert cited, "expected the document to point to rows of docs/deviations.md"
    assert cited <= rows, f"docs/deviations.md has no rows {sorted(cited - rows)}"
