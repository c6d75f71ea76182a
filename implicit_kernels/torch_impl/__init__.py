"""The ``"torch"`` backend: the reference's arithmetic rearranged by the exact splits of
docs/diif.md#equal-cheaper-forms (first-layer projections once per LR pixel or corner,
the fine layer's ensemble before its ReLU), in plain PyTorch. One module per decoder
(``liif.py`` defines ``liif``, ...), imported by :mod:`implicit_kernels.backends` on use.
"""
