"""Shipped weights and loading a model by name or path, without running pickled code.

Each shipped model is ``<name>.safetensors`` in this folder, written by
``python -m implicit_kernels train CONFIG --export NAME.safetensors``
(:func:`implicit_kernels.apps.train.export`, :func:`save_weights`): the state dict (fp16) as
the file's tensors, and ``format`` (``"implicit-kernels-weights/1"``), ``model``,
``kwargs``, ``encoder_kwargs``, ``step``, ``elapsed`` and ``config`` as its metadata, each
a JSON string.  ``<name>.yaml`` beside it is the config it was trained with.  See
``README.md`` here for how they were trained.

:func:`load_model` also takes a path to such a file, to an older ``.pt`` weights file
(the same keys in one dict), or to a training checkpoint (``last.pt``), whose config
names the model.  ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``:
tensors and plain data only, so a file holding any other object (a pickle that could run
code when loaded) is refused, never unpickled.
"""
from __future__ import annotations

import importlib.resources
import json
import os
import pickle
import re

import torch

import models

__all__ = ["shipped", "load_model", "load_model_file", "read_weights", "save_weights",
           "load_torch_file", "looks_like_path", "UnknownModelError", "WEIGHTS_FORMAT",
           "CHECKPOINT_FORMAT", "SUFFIX"]

WEIGHTS_FORMAT = "implicit-kernels-weights/1"
CHECKPOINT_FORMAT = "implicit-kernels-checkpoint/1"
#: File name ending of shipped and exported weights.
SUFFIX = ".safetensors"
#: Metadata stored beside the state dict (JSON strings in a safetensors file).
METADATA = ("format", "model", "kwargs", "encoder_kwargs", "step", "elapsed", "config")


class UnknownModelError(ValueError):
    """The name is not a shipped model (and does not look like a path)."""


def _folder():
    return importlib.resources.files(__package__)


def shipped() -> list[str]:
    """Names of the models whose weights ship with the package."""
    return sorted(p.name[:-len(SUFFIX)] for p in _folder().iterdir() if p.name.endswith(SUFFIX))


def looks_like_path(spec: str) -> bool:
    """Whether a ``--model`` value is clearly a file path rather than a model name: it
    has a folder separator or a file extension.  A bare name is never looked up in the
    working directory, so a file there named like a shipped model is not read."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return any(s in spec for s in seps) or bool(os.path.splitext(spec)[1])


def load_torch_file(path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, dicts, lists, numbers
    and strings only.

    Raises:
        ValueError: the file holds other objects (refused without running them), or
            is not a readable torch file; one-line messages.
    """
    name = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the first object it would not create ("Unsupported global: GLOBAL
        # io.open ..."); any other unpickling error is a damaged or foreign file.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise ValueError(f"cannot read weights {name!r}: not a torch file") from None
        raise ValueError(f"refused to load {name!r}: it holds objects other than tensors "
                         f"and plain data ({found.group(1)}; loading it could run code); "
                         "only weights files and training checkpoints are accepted") from None
    except FileNotFoundError:
        raise ValueError(f"cannot read weights {name!r}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"cannot read weights {name!r}: it is a directory") from None
    except Exception as exc:  # noqa: BLE001  (zip, pickle and storage errors have many types)
        raise ValueError(f"cannot read weights {name!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def save_weights(weights: dict, path) -> None:
    """Write ``weights`` (the keys of :data:`METADATA` and ``state_dict``) as a
    safetensors file, atomically (a temporary file in the same folder, then
    ``os.replace``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in weights["state_dict"].items()}
    metadata = {k: json.dumps(weights.get(k)) for k in METADATA}
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_safetensors(path: str) -> dict:
    """The weights dict of a safetensors file written by :func:`save_weights`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ValueError(f"cannot read weights {path!r}: no such file") from None
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise ValueError(f"cannot read weights {path!r}: {_first_line(exc)}") from None
    meta = {}
    for key, text in raw.items():
        try:
            meta[key] = json.loads(text)
        except ValueError:
            meta[key] = text   # another tool's plain-text metadata: kept, then rejected below
    return {**meta, "state_dict": state}


def _require(obj: dict, keys, path: str, what: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{path!r} is an implicit-kernels {what} without the key(s) "
                         f"{', '.join(map(repr, missing))}")


def _from_checkpoint(ck: dict, path: str) -> dict:
    """The weights dict of a training checkpoint (its model section names the model)."""
    _require(ck, ("config", "model", "step"), path, "training checkpoint")
    m = ck["config"].get("model") if isinstance(ck["config"], dict) else None
    if not isinstance(m, dict) or "name" not in m:
        raise ValueError(f"{path!r} is an implicit-kernels training checkpoint whose config "
                         "has no model.name")
    return {"format": WEIGHTS_FORMAT, "model": m["name"], "kwargs": m.get("kwargs") or {},
            "encoder_kwargs": m.get("encoder_kwargs") or {}, "state_dict": ck["model"],
            "step": ck["step"], "elapsed": ck.get("elapsed"), "config": ck["config"]}


def read_weights(path) -> dict:
    """Read a weights file (safetensors or ``.pt``) or a training checkpoint as a weights
    dict: ``format``, ``model``, ``kwargs``, ``encoder_kwargs``, ``state_dict``, ``step``,
    ``elapsed``, ``config`` (the last three may be ``None``).

    Files ending in ``.safetensors`` are read as safetensors, any other through
    :func:`load_torch_file` (never unpickling arbitrary objects).

    Raises:
        ValueError: unreadable, refused, not an implicit-kernels file, or missing keys.
    """
    name = os.fspath(path)
    if name.endswith(SUFFIX):
        obj = _read_safetensors(name)
    else:
        obj = load_torch_file(name)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        return _from_checkpoint(obj, name)
    if fmt != WEIGHTS_FORMAT:
        raise ValueError(f"{name!r} is not an implicit-kernels weights file or training "
                         "checkpoint")
    _require(obj, ("model", "state_dict"), name, "weights file")
    if not isinstance(obj["state_dict"], dict) or not all(
            isinstance(v, torch.Tensor) for v in obj["state_dict"].values()):
        raise ValueError(f"{name!r}: its state_dict is not a mapping of tensors")
    return {"kwargs": {}, "encoder_kwargs": {}, "step": None, "elapsed": None,
            "config": None, **obj}


def load_model(spec, device="cpu", dtype=torch.float32):
    """Build a model with trained weights, in eval mode.

    Args:
        spec: a shipped model name (:func:`shipped`, e.g. ``"edsr-baseline-diif"``), or a
            path to a weights file or training checkpoint.  Shipped names win; a string
            is taken as a path only when :func:`looks_like_path` (a separator or an
            extension: ``./mine``, ``runs/x/last.pt``, ``mine.safetensors``).  For any
            other path use :func:`load_model_file`.
        device, dtype: where and in which dtype to put the parameters (fp16 weights are
            converted; computing in fp32 is the default).

    Returns:
        ``(model, info)``: the ``nn.Module`` and the file's metadata (``model``, ``step``,
        ``config``, ...; without the state dict).

    Raises:
        UnknownModelError: ``spec`` is neither a shipped name nor a path.
        ValueError: the file cannot be read, is refused, or does not fit the model it
            names.
        ImportError: the repository's ``models`` package is missing.
    """
    if isinstance(spec, os.PathLike):
        return load_model_file(spec, device, dtype)
    names = shipped()
    if spec in names:
        with importlib.resources.as_file(_folder() / f"{spec}{SUFFIX}") as path:
            return _build(read_weights(path), device, dtype)
    if looks_like_path(spec):
        return load_model_file(spec, device, dtype)
    hint = f"shipped: {', '.join(names)}" if names else "no weights are shipped"
    raise UnknownModelError(f"unknown model {spec!r} ({hint}); a weights file needs a folder "
                            f"or an extension in its name (./{spec}), or --weights PATH; "
                            "train one with `python -m implicit_kernels train`")


def load_model_file(path, device="cpu", dtype=torch.float32):
    """:func:`load_model` from a file path, whatever its name looks like."""
    return _build(read_weights(path), device, dtype)


def _build(obj: dict, device, dtype):
    """The model a weights dict names, with its state loaded, in eval mode."""
    try:
        model = models.make(obj["model"], encoder_kwargs=obj.get("encoder_kwargs") or None,
                            **(obj.get("kwargs") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the weights name a model that cannot be built ({obj['model']!r}): "
                         f"{_first_line(exc)}") from None
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"weights for {obj['model']!r} do not fit the model: "
                         f"{' '.join(str(exc).split())}") from exc
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    return model.to(device=device, dtype=dtype).eval(), info
