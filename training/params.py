"""The trainable state: what members and the server exchange.

Under LoRA that is the adapters plus the classifier head (about 75K numbers for MiniLM-L6, 0.3 % of
the model); under full fine-tuning it is every parameter. The frozen base weights never travel:
every party loads them from the same local base model.

Names are the model's own parameter names (``model.named_parameters()``), and the order is the
model's registration order, which is identical on every party that builds the same configuration.
That order is what the numpy-list form (Flower's ``ArrayRecord`` / ``NDArrays``) relies on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.config import TrainingError

__all__ = [
    "TrainableStateError",
    "arrays_to_state",
    "get_trainable_arrays",
    "get_trainable_state",
    "load_trainable_state",
    "load_trainable_state_metadata",
    "save_trainable_state",
    "set_trainable_arrays",
    "set_trainable_state",
    "state_nbytes",
    "state_to_arrays",
    "trainable_names",
]


class TrainableStateError(TrainingError, ValueError):
    """A received state does not fit the model (other names, shapes or count)."""


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train (``requires_grad``), in the model's stable order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_trainable_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """A detached CPU copy of the trainable parameters, by name.

    A copy, so that training the model afterwards does not change what was taken (the server keeps
    the global state while clients train; FedProx keeps it as the anchor).
    """
    return OrderedDict(
        (name, p.detach().to("cpu", copy=True).contiguous())
        for name, p in model.named_parameters()
        if p.requires_grad
    )


def set_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Copy ``state`` into the model's trainable parameters.

    Strict: the names must be exactly the trainable names, and every shape must match. A partial or
    mismatched update (another base model, another label set, another LoRA rank) is an error, not
    something to apply halfway.
    """
    params = OrderedDict((name, p) for name, p in model.named_parameters() if p.requires_grad)
    missing = [name for name in params if name not in state]
    unexpected = [name for name in state if name not in params]
    if missing or unexpected:
        raise TrainableStateError(
            "trainable state does not match the model: "
            f"{len(missing)} missing {_few(missing)}, {len(unexpected)} unexpected {_few(unexpected)}"
        )
    wrong = []
    for name, p in params.items():
        shape = tuple(state[name].shape)
        if shape != tuple(p.shape):
            wrong.append(f"{name}: got {shape}, expected {tuple(p.shape)}")
    if wrong:
        raise TrainableStateError(
            "trainable state has wrong shapes: "
            + "; ".join(wrong[:5])
            + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else "")
        )
    with torch.no_grad():
        for name, p in params.items():
            value = state[name]
            tensor = torch.from_numpy(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
            p.copy_(tensor.to(device=p.device, dtype=p.dtype))


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
    """The state's tensors as numpy arrays, in the state's order (fp32 for bf16/fp16 tensors)."""
    arrays = []
    for tensor in state.values():
        t = tensor.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bf16; keep transport uniform
            t = t.float()
        arrays.append(t.numpy().copy())
    return arrays


def arrays_to_state(arrays: Sequence[np.ndarray], *, names: Sequence[str]) -> OrderedDict[str, torch.Tensor]:
    """Pair ``arrays`` with ``names`` (normally ``trainable_names(model)``)."""
    if len(arrays) != len(names):
        raise TrainableStateError(f"got {len(arrays)} arrays for {len(names)} trainable parameters")
    return OrderedDict(
        (name, torch.from_numpy(np.array(a, copy=True))) for name, a in zip(names, arrays, strict=True)
    )


def get_trainable_arrays(model: nn.Module) -> list[np.ndarray]:
    """``state_to_arrays(get_trainable_state(model))``: the Flower ``NDArrays`` form."""
    return state_to_arrays(get_trainable_state(model))


def set_trainable_arrays(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Inverse of ``get_trainable_arrays`` (strict about count and shapes)."""
    set_trainable_state(model, arrays_to_state(arrays, names=trainable_names(model)))


def state_nbytes(state: Mapping[str, torch.Tensor] | Sequence[np.ndarray]) -> int:
    """Bytes of raw tensor data in a state (a name->tensor mapping or a list of arrays)."""
    values = state.values() if isinstance(state, Mapping) else state
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        else:
            total += np.asarray(v).nbytes
    return total


def save_trainable_state(
    path: str | Path, state: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the state as a safetensors file (no pickle: safe to load from an untrusted party).

    ``metadata`` (strings only, a safetensors rule) can carry e.g. the ``TrainConfig`` as JSON.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    meta = dict(metadata or {})
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in meta.items()):
        raise TypeError("safetensors metadata keys and values must be strings")
    save_file(tensors, str(path), metadata=meta)
    return path


def load_trainable_state(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a state written by ``save_trainable_state`` (apply it with ``set_trainable_state``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TrainableStateError(f"no trainable-state file at {str(path)!r}")
    return OrderedDict(load_file(str(path)))


def load_trainable_state_metadata(path: str | Path) -> dict[str, str]:
    """The metadata strings stored with a state file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _few(names: Sequence[str], limit: int = 3) -> str:
    if not names:
        return ""
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"({shown}{', ...' if len(names) > limit else ''})"
