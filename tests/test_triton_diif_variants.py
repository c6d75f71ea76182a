"""The "triton" backend for DLTE and DIIF's "w/o se" ablation: what is specific to it
(values, gradients, chunking, opcheck and compile are the conformance suite's,
tests/test_conformance.py).

Runs on a GPU, or on CPU tensors under Triton's interpreter
(tests/test_triton_interpreter.py runs it in its own process)."""
import torch
from diif_variants import VARIANTS
from helpers import triton_device

from implicit_kernels import backends

DEVICE = triton_device()


def test_backend_lists_the_variants():
    feat = torch.zeros(1, 4, 5, 7, device=DEVICE)
    for decoder in VARIANTS:
        assert backends.available_backends(decoder, feat)["triton"][0]
