"""Run the whole pipeline (``pipeline.stages`` of the config) in dependency order.

    python pipelines/full.py [--config conf/default.yaml] [--force] [key.sub=value ...]
    ray job submit --working-dir . -- python pipelines/full.py workdir=/shared/runs/x

Standalone it starts a local Ray; under ``ray job submit`` it joins the cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main())
