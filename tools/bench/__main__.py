"""``python -m tools.bench NAME [args]``: run one benchmark (explicit table, no registry)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "entities": "tools.bench.entities",
    "pseudo_masks": "tools.bench.pseudo_masks",
    "train_step": "tools.bench.train_step",
    "evaluate": "tools.bench.evaluate",
    "ingest": "tools.bench.ingest",
    "serve": "tools.bench.serve",
    "memory": "tools.bench.memory",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m tools.bench {{{','.join(BENCHMARKS)}}} [args]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
