"""Shipped weights and loading a model by name or path.

Each shipped model is ``<name>.pt`` in this folder, written by
``python -m implicit_kernels train CONFIG --export`` (:func:`implicit_kernels.train.export`):
``{"format": "implicit-kernels-weights/1", "model": name, "kwargs", "encoder_kwargs",
"state_dict" (fp16), "step", "elapsed", "config"}``, beside ``<name>.yaml``, the config it
was trained with.  See ``README.md`` here for how they were trained.

:func:`load_model` also takes a path to such a file, or to a training checkpoint
(``last.pt``), whose config names the model.
"""
from __future__ import annotations

import importlib.resources
import os

import torch

__all__ = ["shipped", "load_model", "UnknownModelError"]


class UnknownModelError(ValueError):
    """The name is neither a shipped model nor an existing file."""


def _folder():
    return importlib.resources.files(__package__)


def shipped() -> list[str]:
    """Names of the models whose weights ship with the package."""
    return sorted(p.name[:-3] for p in _folder().iterdir() if p.name.endswith(".pt"))


def _read(path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (pickle/zip errors have many types)
        raise ValueError(f"cannot read weights {os.fspath(path)!r}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{os.fspath(path)!r} is not an implicit-kernels weights file")
    if obj.get("format") == "implicit-kernels-checkpoint/1":
        m = obj["config"]["model"]
        return {"model": m["name"], "kwargs": m.get("kwargs") or {},
                "encoder_kwargs": m.get("encoder_kwargs") or {}, "state_dict": obj["model"],
                "step": obj["step"], "config": obj["config"]}
    if obj.get("format") != "implicit-kernels-weights/1":
        raise ValueError(f"{os.fspath(path)!r} is not an implicit-kernels weights file or "
                         "training checkpoint")
    return obj


def load_model(spec: str, device="cpu", dtype=torch.float32):
    """Build a model with trained weights, in eval mode.

    Args:
        spec: a shipped model name (:func:`shipped`, e.g. ``"edsr-baseline-diif"``) or a
            path to a weights file or training checkpoint.
        device, dtype: where and in which dtype to put the parameters (fp16 weights are
            converted; computing in fp32 is the default).

    Returns:
        ``(model, info)``: the ``nn.Module`` and the file's metadata (``model``, ``step``,
        ``config``, ...; without the state dict).

    Raises:
        UnknownModelError: ``spec`` is neither a shipped name nor a file.
        ValueError: the file cannot be read or does not fit the model it names.
        ImportError: the repository's ``models`` package is missing.
    """
    if os.path.isfile(spec):
        obj = _read(spec)
    else:
        names = shipped()
        if spec not in names:
            hint = (f"shipped: {', '.join(names)}" if names else "no weights are shipped")
            raise UnknownModelError(f"unknown model {spec!r}: not a file and not a shipped "
                                    f"model ({hint}); train one with "
                                    "`python -m implicit_kernels train`")
        with importlib.resources.as_file(_folder() / f"{spec}.pt") as path:
            obj = _read(path)
    try:
        import models
    except ImportError as exc:
        raise ImportError(f"loading a model needs the `models` package: {exc}") from exc
    model = models.make(obj["model"], encoder_kwargs=obj.get("encoder_kwargs") or None,
                        **(obj.get("kwargs") or {}))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"weights for {obj['model']!r} do not fit the model: {exc}") from exc
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    return model.to(device=device, dtype=dtype).eval(), info
