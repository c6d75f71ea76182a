"""What each benchmark case runs: the model with seeded random weights (cached across
cases), its input sets, the function timed, and the float32 ``reference`` output it is
checked against (:func:`max_diff`).
"""
from __future__ import annotations

import copy
import functools

import torch

import models
from implicit_kernels.apps import demo

from .cases import DEVICE, FEAT_CHANNELS, ON_CUDA, Case

#: Output pixels up to which the reference runs for ``max_diff``.
DIFF_MAX_PIXELS = 2_100_000 if ON_CUDA else 40_000
INPUT_SETS = 3


def model_name(case: Case) -> str:
    """The ``models.make`` name of the case's model."""
    return case.model if case.suite == "encoder" else f"edsr-baseline-{case.model}"


@functools.lru_cache(maxsize=None)
def seeded_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """``models.make(name)`` with seeded random weights on DEVICE; other dtypes are the
    float32 model's weights rounded."""
    if dtype != torch.float32:
        return copy.deepcopy(seeded_model(name, torch.float32)).to(dtype)
    torch.manual_seed(0)
    return models.make(name).eval().to(DEVICE)


@functools.lru_cache(maxsize=None)
def _upcast_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """The ``dtype`` model's (rounded) weights in float32: the reference's model."""
    if dtype == torch.float32:
        return seeded_model(name, dtype)
    return copy.deepcopy(seeded_model(name, dtype)).float()


@functools.lru_cache(maxsize=4)
def input_sets(in_size: tuple, dtype: torch.dtype) -> tuple:
    """``INPUT_SETS`` pairs (feature map ``1×64×H×W``, normalised image ``1×3×H×W``),
    seeded, on DEVICE in ``dtype``."""
    gen = torch.Generator().manual_seed(1)
    sets = []
    for _ in range(INPUT_SETS):
        feat = torch.randn(1, FEAT_CHANNELS, *in_size, generator=gen)
        img = torch.rand(1, 3, *in_size, generator=gen) * 2 - 1
        sets.append((feat.to(DEVICE, dtype), img.to(DEVICE, dtype)))
    return tuple(sets)


def forward(case: Case, model, backend: str):
    """``fn(feat, img) -> output`` of the case's model (encoders ignore ``feat``)."""
    if case.suite == "encoder":
        return lambda feat, img: model(img)
    size = case.out_size

    def decode(feat, img):
        return model.decode(feat, img, size, backend=backend)
    return decode


#: Reference outputs (float32, on the host) by case key; cases are ordered so that only the
#: latest few keys are still needed.
_REFERENCE_OUTPUTS: dict = {}
_REFERENCE_KEEP = 4


def _reference_output(case: Case, out: torch.Tensor) -> torch.Tensor:
    """The reference's output for the case's first input set: ``out`` itself when the
    case is the float32 reference (the ``reference`` backend, eager for encoders), else
    the reference run in float32 on the case's rounded weights and inputs."""
    key = (case.suite, case.model, case.in_size, case.scale, case.dtype)
    if key not in _REFERENCE_OUTPUTS:
        reference = "eager" if case.suite == "encoder" else "reference"
        if case.backend == reference and case.dtype == torch.float32:
            ref = out.cpu()
        else:
            fn = forward(case, _upcast_model(model_name(case), case.dtype), reference)
            feat, img = input_sets(case.in_size, case.dtype)[0]
            with torch.no_grad():
                ref = fn(feat.float(), img.float()).cpu()
        _REFERENCE_OUTPUTS[key] = ref
        while len(_REFERENCE_OUTPUTS) > _REFERENCE_KEEP:
            del _REFERENCE_OUTPUTS[next(iter(_REFERENCE_OUTPUTS))]
    return _REFERENCE_OUTPUTS[key]


def max_diff(case: Case, out: torch.Tensor):
    """Largest |out - reference| (``None`` when the reference is too costly here); fails
    a float32 case beyond the demo's tolerance."""
    if case.out_size[0] * case.out_size[1] > DIFF_MAX_PIXELS:
        return None
    ref = _reference_output(case, out)
    diff = float((out.float().cpu() - ref).abs().max())
    if case.dtype == torch.float32:
        tolerance = demo.TOLERANCE * max(1.0, float(ref.abs().max()))
        assert diff <= tolerance, (f"{case.id}: differs from the reference by {diff:.3g} "
                                   f"(tolerance {tolerance:.3g})")
    return diff
