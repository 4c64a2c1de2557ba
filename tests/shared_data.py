"""Where the shared reference datasets are: `../shared/datasets` beside the repository (as on
developer machines and in CI), or CLEARINGHOUSE_SHARED_DATASETS."""

import os
from pathlib import Path

DATASETS = Path(
    os.environ.get(
        "CLEARINGHOUSE_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)
