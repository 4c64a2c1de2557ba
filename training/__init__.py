"""The pure training core: fine-tuning a BERT-class text classifier with torch + transformers.

Nothing here imports Django: the federation layer (Flower clients/server) and the web service call
into these functions, and the same code trains the centralised baseline, so the comparison between
federated and centralised runs measures the federation and nothing else.

Modules (import the heavy ones explicitly; this package's ``__init__`` stays light):

- ``training.config``      ``TrainConfig`` (frozen, validated, JSON-transportable), errors
- ``training.validation``  rules as pydantic field constraints, and their readable messages
- ``training.metrics``     classification metrics from a confusion matrix (numpy only; the
                           ServerApp pools members' matrices with it)
- ``training.seed``        ``seed_everything``
- ``training.models``      base-model resolution, model + tokenizer factory, LoRA, device/precision
- ``training.params``      trainable state: get/set, numpy lists for Flower, size, safetensors files
- ``training.data``        CSV/TSV/Parquet loading, splits, non-IID partitions, DataLoaders
- ``training.loops``       ``train`` (with the FedProx proximal term), ``evaluate``, ``predict``
- ``training.centralised`` the centralised baseline
"""

from training.config import TrainConfig, TrainingConfigError, TrainingDataError, TrainingError

__all__ = ["TrainConfig", "TrainingConfigError", "TrainingDataError", "TrainingError"]
