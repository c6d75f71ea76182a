"""``python -m implicit_kernels train CONFIG.yaml``: train an implicit SR model.

The recipe is the papers' (docs/liif-lte.md#training-recipe, docs/diif.md#training-settings):
random HR crops and a scale per batch from :mod:`implicit_kernels.apps.data`, LR by Pillow
bicubic, L1 loss on the normalised colours of sampled HR pixels, Adam, the learning rate
multiplied by ``gamma`` at each milestone step.  Point-query decoders (LIIF, LTE, HIIF) are
trained on coordinates and cells, DIIF/DLTE on pixel indices of the HR grid (exact by the
per-pixel equivalence, docs/diif.md#per-pixel-equivalence), through the ``F`` backend
named by ``train.backend`` (any backend that supports autograd).

Runs are resumable exactly: every ``checkpoint_every`` steps (and on SIGINT/SIGTERM, at
the time limit and at the end) ``<out>/last.pt`` is rewritten atomically (a temporary
file, then ``os.replace``) with the model, optimizer, scheduler, step, and every random
state (torch's global generator and each rank's data generator).  Starting the same
command again continues from it; the next step's loss is the one the uninterrupted run
would have had.

Multi-GPU: launch with ``torchrun --nproc_per_node=N -m implicit_kernels train CONFIG``;
each process trains on its own batches (``batch_size`` per process, data seed
``seed + rank``) under ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU); rank 0
writes checkpoints and shows progress.

Configuration (YAML; every key has a default in :data:`DEFAULTS`, ``--set a.b=v``
overrides one)::

    model: {name: edsr-baseline-diif, kwargs: {}, encoder_kwargs: {}}
    data: {root: DIR, max_side: null, lr_patch: null, hr_patch: 192,
           scale: {choices: [2, 2.5, 3, 3.5, 4]}, sample_q: 2304, augment: true}
    train: {batch_size: 16, steps: 1000000, lr: 1.0e-4, milestones: [...], gamma: 0.5,
            backend: torch, checkpoint_every: 1000, seed: 0, minutes: null, out: runs/NAME,
            init: null, encoder_amp: null}

``train.encoder_amp`` (or ``--encoder-amp``): ``bf16`` or ``fp16`` runs the encoder alone
in mixed precision (``torch.autocast``; parameters, optimizer and decoder stay float32).
On a CPU with bfloat16 instructions (AVX512-BF16, AMX) ``bf16`` about halves the
encoder's convolution time, which dominates a step; ``null`` (the default) is float32.

``train.init`` (or ``--init``) names weights to start a new run from (a shipped name or a
weights/checkpoint path, read as :func:`implicit_kernels.apps.weights.load_model` does): the
model's parameters only, with a fresh optimizer and schedule.  It is ignored when the run
resumes its own checkpoint.

``python -m implicit_kernels train CONFIG --export W.safetensors`` writes the run's last
checkpoint as shipped weights (fp16 state dict + config + step; see
:mod:`implicit_kernels.apps.weights`).

Checkpoints hold only tensors and plain data (the random states are tensors), so they
are read back with ``torch.load(weights_only=True)``: a checkpoint file never runs code.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import signal
import sys
import time

import torch

import models

from . import data as D
from .weights import (
    CHECKPOINT_FORMAT,
    SUFFIX,
    load_model,
    load_torch_file,
    read_weights,
    save_weights,
)

#: Default configuration; a config file overrides any subset.
DEFAULTS = {
    "model": {"name": "edsr-baseline-diif", "kwargs": {}, "encoder_kwargs": {}},
    "data": {"root": None, "max_side": None, "lr_patch": None, "hr_patch": 192,
             "scale": {"uniform": [1, 4]}, "sample_q": 2304, "augment": True, "cache": True},
    "train": {"batch_size": 16, "steps": 1_000_000, "lr": 1e-4,
              "milestones": [200_000, 400_000, 600_000, 800_000], "gamma": 0.5,
              "backend": "torch", "checkpoint_every": 1000, "seed": 0, "minutes": None,
              "out": None, "device": None, "init": None, "encoder_amp": None},
}

#: ``train.encoder_amp`` values and their autocast dtypes.
ENCODER_AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Decoders trained on pixel indices (``pixels=``); the others take ``coord=``/``cell=``.
PIXEL_DECODERS = ("diif", "dlte")
CHECKPOINT = "last.pt"

__all__ = ["DEFAULTS", "load_config", "build_model", "build_sampler", "Trainer", "export",
           "main"]


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

def _coerce(default, value):
    """YAML 1.1 reads ``2e-4`` (no dot) as a string; turn such strings into numbers where
    the default is a float."""
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _merge(base: dict, over: dict, where: str = "") -> dict:
    """``base`` updated recursively with ``over``; unknown keys are errors (typos in a
    config must not be silently ignored)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if key not in base:
            raise ValueError(f"unknown config key {where}{key!r}; known: {', '.join(base)}")
        if isinstance(base[key], dict) and key not in ("kwargs", "encoder_kwargs", "scale"):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}{key} must be a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = _coerce(base[key], copy.deepcopy(value))
    return out


def _set(cfg: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML)."""
    import yaml

    path, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set needs key=value, got {assignment!r}")
    keys = path.strip().split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise ValueError(f"--set: {path!r} is not a config key")
        node = node[k]
    if keys[-1] not in node:
        raise ValueError(f"--set: {path!r} is not a config key")
    node[keys[-1]] = _coerce(node[keys[-1]], yaml.safe_load(text))


def load_config(path: str | None = None, overrides=()) -> dict:
    """The defaults, updated with the YAML file ``path`` and ``key=value`` overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        import yaml

        with open(path) as f:
            cfg = _merge(cfg, yaml.safe_load(f) or {})
    for item in overrides:
        _set(cfg, item)
    return cfg


def build_model(cfg: dict):
    """The model of ``cfg["model"]`` (``models.make``; random initialisation)."""
    m = cfg["model"]
    return models.make(m["name"], encoder_kwargs=m.get("encoder_kwargs") or None,
                       **(m.get("kwargs") or {}))


def build_sampler(cfg: dict, rank: int = 0, images=None) -> D.PairSampler:
    """The :class:`~implicit_kernels.apps.data.PairSampler` of ``cfg["data"]`` (reading the
    folder unless ``images`` is given), seeded with ``train.seed + rank``."""
    d, t = cfg["data"], cfg["train"]
    scale = D.ScaleDist.parse(d["scale"])
    if images is None:
        if not d["root"]:
            raise ValueError("data.root is not set (the folder of training images)")
        images = D.ImageFolder(os.path.expanduser(d["root"]),
                               min_side=D.max_hr_side(scale, d["lr_patch"], d["hr_patch"]),
                               max_side=d["max_side"], cache=d["cache"])
    return D.PairSampler(images, t["batch_size"], scale=scale, lr_patch=d["lr_patch"],
                         hr_patch=d["hr_patch"], sample_q=d["sample_q"], augment=d["augment"],
                         seed=t["seed"] + rank)


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------

def _atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a crash
    mid-write leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One training run: model, Adam, MultiStepLR, data sampler and checkpointing.

    Args:
        cfg: a configuration from :func:`load_config`.
        model: the model (default :func:`build_model`).
        sampler: the data sampler (default :func:`build_sampler`).
        out: run folder (default ``cfg["train"]["out"]``); ``None``: no checkpoints.
    """

    def __init__(self, cfg: dict, model=None, sampler=None, out: str | None = None):
        import torch.distributed as dist

        self.cfg = cfg
        t = cfg["train"]
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = torch.device(t["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = (model if model is not None else build_model(cfg)).to(self.device)
        self.decoder = cfg["model"]["name"].rpartition("-")[2]
        self.sampler = sampler if sampler is not None else build_sampler(cfg, self.rank)
        self.net = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if t["encoder_amp"] not in ENCODER_AMP:
            raise ValueError(f"train.encoder_amp must be one of {list(ENCODER_AMP)}, got "
                             f"{t['encoder_amp']!r}")
        self.encoder_amp = ENCODER_AMP[t["encoder_amp"]]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t["lr"])
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(t["milestones"]), gamma=t["gamma"])
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of the run
        self.out = out if out is not None else t["out"]
        self.path = os.path.join(self.out, CHECKPOINT) if self.out else None

    def initialise_from(self, spec: str) -> dict:
        """Copy the parameters of the weights ``spec`` (shipped name or path) into the model;
        returns their metadata (``step``, ``elapsed``, ...).

        Raises ``ValueError`` when the weights are for another model."""
        other, info = load_model(spec)
        if info["model"] != self.cfg["model"]["name"]:
            raise ValueError(f"--init {spec!r} holds {info['model']!r} weights, the run trains "
                             f"{self.cfg['model']['name']!r}")
        self.model.load_state_dict(other.state_dict())
        return info

    # -- one step ---------------------------------------------------------------------------

    def loss(self, batch: D.Batch) -> torch.Tensor:
        """L1 between the prediction at the batch's target pixels and their colours, both in
        the normalised space ``(x - 0.5) / 0.5``."""
        inp = (batch.lr - 0.5) / 0.5
        backend = self.cfg["train"]["backend"]
        amp = self.encoder_amp
        if self.decoder in PIXEL_DECODERS:
            pred = self.net(inp, batch.hr_size, pixels=batch.pixels, backend=backend,
                            encoder_autocast=amp)
        else:
            pred = self.net(inp, None, coord=batch.coord, cell=batch.cell, backend=backend,
                            encoder_autocast=amp)
        return torch.nn.functional.l1_loss(pred, (batch.rgb - 0.5) / 0.5)

    def train_step(self, batch: D.Batch) -> float:
        """One optimisation step on ``batch``; returns the loss before the update."""
        self.net.train()
        batch = batch.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    # -- checkpoints ------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue exactly (collective under DDP: all ranks call it)."""
        gen = self.sampler.generator.get_state()
        gens = [gen]
        if self.distributed:
            import torch.distributed as dist

            gens = [None] * self.world
            dist.all_gather_object(gens, gen)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg,
            "step": self.step,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "data": gens},
        }

    def save(self) -> None:
        """Write ``<out>/last.pt`` atomically (rank 0; every rank must call it)."""
        state = self.state()
        if self.rank == 0 and self.path:
            os.makedirs(self.out, exist_ok=True)
            _atomic_save(state, self.path)

    def load(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save` (same model and world size).

        Raises ``ValueError`` for a file that is not such a checkpoint, or that holds
        objects other than tensors and plain data (refused, never unpickled)."""
        ck = load_torch_file(path)
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path!r} is not an implicit-kernels training checkpoint")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step, self.elapsed = ck["step"], ck.get("elapsed", 0.0)
        gens = ck["rng"]["data"]
        if len(gens) != self.world:
            raise ValueError(f"{path} was written by {len(gens)} processes, this run has "
                             f"{self.world}: exact resume needs the same number")
        self.sampler.generator.set_state(gens[self.rank])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])

    # -- the loop ---------------------------------------------------------------------------

    def fit(self, steps: int | None = None, minutes: float | None = None,
            progress: bool = True) -> float:
        """Train until ``steps`` (default ``train.steps``) or ``minutes`` of this session's
        wall time (default ``train.minutes``), checkpointing as configured; returns the
        mean loss of the last logging window."""
        t = self.cfg["train"]
        steps = t["steps"] if steps is None else steps
        minutes = t["minutes"] if minutes is None else minutes
        every = t["checkpoint_every"]
        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum  # finish the step, checkpoint, exit

        handlers = {}
        if threading_main():
            for s in (signal.SIGINT, signal.SIGTERM):
                handlers[s] = signal.signal(s, on_signal)
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, unit="step", dynamic_ncols=True,
                       desc=self.cfg["model"]["name"])
        start = time.monotonic()
        window, window_px, window_t = [], 0, time.monotonic()
        last_mean = math.nan
        log, log_t = [], start  # losses since the last checkpoint line
        try:
            while self.step < steps:
                t0 = time.monotonic()
                batch = self.sampler.next()
                loss = self.train_step(batch)
                self.elapsed += time.monotonic() - t0
                window.append(loss)
                log.append(loss)
                window_px += batch.rgb.shape[0] * batch.rgb.shape[1] * self.world
                if bar is not None:
                    bar.update(1)
                    now = time.monotonic()
                    if now - window_t >= 2 or self.step == steps:
                        last_mean = sum(window) / len(window)
                        img_s = len(window) * batch.lr.shape[0] * self.world / (now - window_t)
                        bar.set_postfix(loss=f"{last_mean:.4f}",
                                        lr=f"{self.scheduler.get_last_lr()[0]:.1e}",
                                        img_s=f"{img_s:.1f}",
                                        kpx_s=f"{window_px / (now - window_t) / 1e3:.1f}")
                        window, window_px, window_t = [], 0, now
                out_of_time = minutes is not None and time.monotonic() - start >= 60 * minutes
                halt = self._agree(stop["signal"] is not None or out_of_time)
                if halt or (every and self.step % every == 0) or self.step == steps:
                    self.save()
                    if bar is None and self.rank == 0 and log:
                        # Without a progress bar (logs, background runs) a line per checkpoint.
                        now = time.monotonic()
                        print(f"step {self.step}: loss {sum(log) / len(log):.4f}, lr "
                              f"{self.scheduler.get_last_lr()[0]:.1e}, "
                              f"{len(log) / (now - log_t):.2f} steps/s, "
                              f"{self.elapsed / 60:.1f} min of training", flush=True)
                        log, log_t = [], now
                if halt:
                    break
        finally:
            if bar is not None:
                bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if window:
            last_mean = sum(window) / len(window)
        if stop["signal"] is not None and self.rank == 0:
            print(f"stopped by signal {stop['signal']} at step {self.step}; checkpoint "
                  f"{self.path}", file=sys.stderr)
        return last_mean

    def _agree(self, flag: bool) -> bool:
        """Under DDP, stop only when any rank wants to, all at the same step."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)],
                         device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def threading_main() -> bool:
    """Signal handlers can be installed only from the main thread."""
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------

def export(checkpoint: str, dest: str, dtype=torch.float16) -> dict:
    """Write the model of a training checkpoint as shipped weights, a safetensors file
    (:func:`implicit_kernels.apps.weights.save_weights`): the state dict in ``dtype``, with
    ``format``, ``model``, ``kwargs``, ``encoder_kwargs``, ``step``, ``elapsed`` and
    ``config`` as metadata.  Returns the weights dict."""
    if not dest.endswith(SUFFIX):
        raise ValueError(f"--export writes safetensors: name the file *{SUFFIX}, not {dest!r}")
    weights = read_weights(checkpoint)
    weights["state_dict"] = {k: (v.to(dtype) if v.is_floating_point() else v)
                             for k, v in weights["state_dict"].items()}
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    save_weights(weights, dest)
    return weights


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m implicit_kernels train",
        description="Train an implicit SR model from a YAML config (resumes <out>/last.pt "
                    "when it exists). Multi-GPU: torchrun --nproc_per_node=N -m "
                    "implicit_kernels train CONFIG.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", help="run folder (default: train.out, else runs/<model>)")
    p.add_argument("--data", help="training image folder (overrides data.root)")
    p.add_argument("--steps", type=int, help="total steps (overrides train.steps)")
    p.add_argument("--minutes", type=float,
                   help="stop (with a checkpoint) after this many minutes of this session")
    p.add_argument("--backend", help="F backend of the decoder (overrides train.backend)")
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    p.add_argument("--encoder-amp", choices=[k for k in ENCODER_AMP if k],
                   help="mixed precision for the encoder alone (overrides train.encoder_amp)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=2e-4 (repeatable)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start a new run from these weights (shipped name or path; overrides "
                        "train.init; ignored when resuming)")
    p.add_argument("--restart", action="store_true",
                   help="ignore an existing checkpoint and start from step 0")
    p.add_argument("--export", metavar=f"WEIGHTS{SUFFIX}",
                   help="do not train: write the run's last checkpoint as fp16 weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _init_distributed():
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def main(argv=None) -> int:
    """Run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (OSError, ValueError) as exc:
        print(f"train: bad config: {exc}", file=sys.stderr)
        return 2
    t = cfg["train"]
    for key in ("steps", "minutes", "backend", "device", "init", "encoder_amp"):
        if getattr(args, key) is not None:
            t[key] = getattr(args, key)
    if args.data:
        cfg["data"]["root"] = args.data
    t["out"] = args.out or t["out"] or os.path.join("runs", cfg["model"]["name"])
    if args.export:
        path = os.path.join(t["out"], CHECKPOINT)
        if not os.path.exists(path):
            print(f"train: no checkpoint {path} to export", file=sys.stderr)
            return 1
        try:
            w = export(path, args.export)
        except ValueError as exc:
            print(f"train: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.export}: {w['model']} at step {w['step']}, "
              f"{os.path.getsize(args.export) / 2 ** 20:.1f} MiB")
        return 0

    device = _init_distributed()
    if device is not None:
        t["device"] = str(device)
    try:
        trainer = Trainer(cfg)
    except (OSError, ValueError, ImportError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 1
    if trainer.rank == 0:
        n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"{cfg['model']['name']}: {n:,} parameters, {len(trainer.sampler.images)} "
              f"training images ({len(trainer.sampler.images.skipped)} skipped), device "
              f"{trainer.device}, backend {t['backend']}, world size {trainer.world}")
    if not args.restart and os.path.exists(trainer.path):
        try:
            trainer.load(trainer.path)
        except ValueError as exc:
            print(f"train: cannot resume: {exc}", file=sys.stderr)
            return 1
        if trainer.rank == 0:
            print(f"resumed {trainer.path} at step {trainer.step}")
    elif t["init"]:
        try:
            info = trainer.initialise_from(t["init"])
        except (ValueError, ImportError) as exc:
            print(f"train: --init: {exc}", file=sys.stderr)
            return 1
        if trainer.rank == 0:
            print(f"initialised from {t['init']} ({info['model']}, step {info.get('step')})")
    loss = trainer.fit(progress=not args.no_progress)
    if trainer.rank == 0:
        print(f"step {trainer.step}, loss {loss:.4f}, {trainer.elapsed / 60:.1f} min of "
              f"training in total; checkpoint {trainer.path}")
    if trainer.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
