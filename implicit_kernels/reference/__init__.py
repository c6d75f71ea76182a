"""The ``"reference"`` backend: each decoder in the paper's form, written for clarity.

It is the oracle every other backend is tested against. One module per decoder
(``liif.py`` defines ``liif``, ...), imported by :mod:`implicit_kernels.backends` on use.
"""
