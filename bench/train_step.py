"""One training step timed per backend: :func:`time_train_steps`, the training rows of
``python -m bench.cpu_headline``.

A step is :meth:`implicit_kernels.apps.train.Trainer.train_step` (forward, L1 loss,
backward, Adam update) of the configuration's model on a batch from its data sampler.
Batches are drawn first (each draw timed: reading, cropping, the bicubic LR, the sampled
pixels), so the steps time training alone; each backend gets a model with the same seeded
initialisation and the same batches, runs one untimed step, then one timed step per
remaining batch.
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import torch

from implicit_kernels.apps import train

#: The CPU training configuration the shipped EDSR-baseline-DIIF weights were trained with.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "edsr-baseline-diif-cpu.yaml"


#: The suffix of a backend name that adds ``train.encoder_amp``: ``"cpu+encoder-bf16"``.
AMP_SUFFIX = "+encoder-"


def time_train_steps(config=DEFAULT_CONFIG, backends=("cpu", "torch"), steps: int = 5,
                     overrides=()) -> list[dict]:
    """Time ``steps`` training steps per backend (after one untimed step).

    Args:
        config: a training YAML (:func:`implicit_kernels.apps.train.load_config`).
        backends: ``F`` backends to train through (``train.backend``), each optionally
            with ``+encoder-bf16`` (or ``-fp16``): the same with ``train.encoder_amp``.
        steps: timed steps per backend (the median is reported).
        overrides: ``key=value`` settings applied over the file (``data.root=DIR``, ...).

    Returns:
        One row per backend: ``backend``, ``model``, ``batch_size``, ``hr_patch``,
        ``sample_q``, ``status`` (``"ok"`` or ``"skipped: <why>"``), ``seconds`` (median
        step), ``step_times``, ``steps_per_s``, ``sample_seconds`` (median draw of one
        batch) and ``loss`` (the last step's).
    """
    cfg = train.load_config(str(config), overrides)
    cfg["train"]["device"] = "cpu"
    data, opts = cfg["data"], cfg["train"]
    base = {"model": cfg["model"]["name"], "batch_size": opts["batch_size"],
            "hr_patch": data["hr_patch"], "sample_q": data["sample_q"]}
    root = os.path.expanduser(data["root"] or "")
    if not os.path.isdir(root):
        return [{**base, "backend": b, "status": f"skipped: no training images at {root!r}"}
                for b in backends]
    sampler = train.build_sampler(cfg)
    batches, draws = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        batches.append(sampler.next())
        draws.append(time.perf_counter() - start)
    rows = []
    for backend in backends:
        run = copy.deepcopy(cfg)
        run["train"]["backend"], _, amp = backend.partition(AMP_SUFFIX)
        run["train"]["encoder_amp"] = amp or None
        torch.manual_seed(opts["seed"])
        trainer = train.Trainer(run, sampler=sampler, out=None)
        trainer.train_step(batches[0])  # untimed: first-use costs
        times = []
        for batch in batches[1:]:
            start = time.perf_counter()
            loss = trainer.train_step(batch)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append({**base, "backend": backend, "status": "ok", "seconds": median,
                     "step_times": times, "steps_per_s": 1 / median,
                     "sample_seconds": statistics.median(draws), "loss": loss})
    return rows
