"""Publish the studies: copy their result files into ``analyses/results/`` and re-render README.md's
Results blocks from those files (``mythos_lens.studies.results``; ``tests/test_readme_results.py``
checks that README and files agree).

Usage (after ``mythos-lens study lora`` and ``mythos-lens study depth``)::

    .venv/bin/python analyses/export_results.py --lora runs/lora-study --depth runs/depth-study

Either study can be left out (its files in ``analyses/results/`` are kept); with neither, only
README.md is re-rendered from the files already there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mythos_lens.atomic import atomic_path
from mythos_lens.studies.results import export, render_readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "analyses" / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lora", default=None, help="output directory of `mythos-lens study lora`")
    p.add_argument("--depth", default=None, help="output directory of `mythos-lens study depth`")
    args = p.parse_args()
    export(args.lora, args.depth, RESULTS)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = render_readme(text, RESULTS)
    with atomic_path(readme) as tmp:
        tmp.write_text(new, encoding="utf-8")
    print(f"results in {RESULTS}; README.md {'updated' if new != text else 'unchanged'}")


if __name__ == "__main__":
    main()
