"""Installed size of intent-stream's dependency set, from the distributions in this env.

    python deploy/installed_size.py [--pyproject PATH] [--extra gpu ...]

Resolves the closure of ``[project] dependencies`` (plus the extras named) through the
installed distributions' own requirements (markers evaluated for this interpreter) and sums
the sizes of their installed files (``RECORD``). It measures what ``pip install .`` puts in
site-packages for the worker image, without Docker; the image adds the base OS and Python.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

MIB = 1024 * 1024


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level(pyproject: Path, extras: list[str]) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    optional = project.get("optional-dependencies", {})
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional.get(extra, []):
            req = Requirement(text)
            if canonical(req.name) == canonical(project["name"]):
                pending.extend(req.extras)  # intent-stream[torch] and the like
            else:
                wanted.append(req)
    return wanted


def closure(roots: list[Requirement]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        key = canonical(req.name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            print(f"  (not installed here: {req.name})")
            continue
        found[key] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return found


def installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--top", type=int, default=12, help="largest distributions listed")
    args = parser.parse_args()
    dists = closure(top_level(args.pyproject, args.extra))
    sizes = sorted(((installed_bytes(d), name) for name, d in dists.items()), reverse=True)
    for size, name in sizes[: args.top]:
        print(f"  {size / MIB:9.1f} MiB  {name}")
    total = sum(size for size, _ in sizes)
    print(f"{len(sizes)} distributions, {total / MIB:.1f} MiB installed")


if __name__ == "__main__":
    main()
