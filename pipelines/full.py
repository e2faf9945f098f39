"""Run the whole pipeline (``pipeline.stages`` of the config) in dependency order.

    python pipelines/full.py [--config conf/default.yaml] [--force] [key.sub=value ...]
    ray job submit --working-dir . -- python pipelines/full.py workdir=/shared/runs/x

Standalone it starts a local Ray; under ``ray job submit`` it joins the cluster. Exit codes
(``pipelines/common.py``): 0 done, 2 bad config / missing benchmark data / unreachable
workdir or MLflow (nothing ran), 3 a stage stopped early and resumably (e.g.
``train.time_limit_s``): rerun the same command to continue.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main())
