"""Deterministic seeding.

Reproducibility matters twice here: a federated round must be re-runnable when a member disputes a
result, and the federated-vs-centralised comparison is only meaningful if both start from the same
initial head and see batches in a reproducible order.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device).

    With ``deterministic`` the cheap determinism switches are set too (cuDNN deterministic kernels,
    no cuDNN autotuning). ``torch.use_deterministic_algorithms`` is NOT enabled: on CUDA it requires
    ``CUBLAS_WORKSPACE_CONFIG`` to be set before CUDA starts and makes some kernels raise, a cost
    out of proportion here. On CPU, same seed + same data gives bit-identical results.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    # Only affects subprocesses started from here (hash randomisation of this process is fixed).
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
