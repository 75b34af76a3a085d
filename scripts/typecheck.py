"""Type-check the packages with mypy (settings: pyproject's [tool.mypy]); `make check` runs it.

mypy finds a package by its folder's name, but `ferry` is the folder sdk/, and `ferry.services` and
`ferry.inference` are services/ and inference/ (pyproject's package-dir). The editable install maps
them with an import hook, which mypy does not run. So this lays links under build/typecheck/ that name
each folder as its package (the `mypy_path` the settings give), runs mypy, and prints its report with
the repository's own paths:

    .venv/bin/python scripts/typecheck.py [mypy options]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
TREE = Path("build/typecheck")
# link in the tree -> the folder it names (relative to the repository)
LINKS = {
    TREE / "sdk/ferry": Path("sdk"),
    TREE / "services/ferry/services": Path("services"),
    TREE / "services/ferry/inference": Path("inference"),
}


def lay_links() -> None:
    for link, target in LINKS.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(target, link.parent)
        if link.is_symlink() and os.readlink(link) == relative:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(relative, target_is_directory=True)


def with_own_paths(report: str) -> str:
    for link, target in LINKS.items():
        report = report.replace(f"{link}/", f"{target}/")
    return report


def main() -> int:
    os.chdir(ROOT)
    lay_links()
    stdout, stderr, status = api.run(sys.argv[1:])
    sys.stdout.write(with_own_paths(stdout))
    sys.stderr.write(with_own_paths(stderr))
    return status


if __name__ == "__main__":
    sys.exit(main())
