"""The ``"triton"`` backend: Triton kernels for DIIF (and its "w/o se" ablation,
``diif_without_ensemble`` in ``diif.py``), DLTE (``dlte.py``: DIIF's kernels after a host
Fourier step), LIIF, LTE and HIIF, one module per decoder (``diif.py`` defines ``diif``;
HIIF's is the package ``hiif/``; shared blocks in ``mlp.py``, ``launch.py``, ``grid.py`` and
``ensemble.py``), each registering its kernels as opaque ``torch.library.custom_op``
operators with the C++ operators' schemas, whose fake implementations and autograd are
:mod:`implicit_kernels.ops`'s (``torch.library.triton_op`` fails ``opcheck`` under
``TRITON_INTERPRET=1``).

Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before
``triton`` was imported (the interpreter, used by the CPU tests).
"""
