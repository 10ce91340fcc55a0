"""Reproducibility across checkouts: the same params and data in two clones at different absolute
paths give byte-identical outputs.

    python bench/two_clones.py [--source ../shared/data/ag_news/test.csv] [--max-rows 3000]

Makes two throwaway DVC projects (bench/scratch_project.py) at different depths, runs `dvc repro`
in each, and compares the MD5 of every file under models/ and reports/, except reports/runtime/
(timings) and reports/report.html (the page shows those timings). Prints the files compared and
any that differ; exits 1 if one does.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from scratch_project import DVC, REPO, commit, make_project, run

AG_NEWS = REPO.parent / "shared/data/ag_news/test.csv"
EXCLUDED = ("reports/runtime/", "reports/report.html")


def digests(root: Path) -> dict[str, str]:
    found = {}
    for folder in ("models", "reports"):
        for path in sorted((root / folder).rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.is_file() and not name.startswith(EXCLUDED) and "/." not in name:
                found[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=AG_NEWS)
    parser.add_argument("--max-rows", type=int, default=3000)
    args = parser.parse_args()
    source = args.source.resolve()
    headerless = {"column_names": ["label", "title", "description"], "text_columns": ["title", "description"],
                  "label_column": "label"} if source == AG_NEWS.resolve() else {}
    results = []
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        for root in (Path(first) / "clone", Path(second) / "a" / "much" / "deeper" / "clone"):
            root.mkdir(parents=True)
            make_project(root, source, download={"max_rows": args.max_rows, **headerless})
            commit(root, "init")
            run(DVC, "repro", cwd=root)
            results.append(digests(root))
    a, b = results
    differ = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    print(f"{len(a)} files compared under models/ and reports/ (without {', '.join(EXCLUDED)})")
    for name in sorted(a):
        print(f"  {a[name]}  {name}{'  DIFFERS' if name in differ else ''}")
    if differ:
        sys.exit(f"differ: {', '.join(differ)}")
    print("every file is identical")


if __name__ == "__main__":
    main()
