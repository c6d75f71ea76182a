"""Submodules a package imports on first attribute access (keeps ``import`` light)."""
import importlib


def lazy_submodules(package: str, names):
    """A module-level ``__getattr__`` for ``package`` that imports its submodules ``names``
    when first accessed as attributes, and raises AttributeError for anything else."""
    names = frozenset(names)

    def __getattr__(name):
        if name in names:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
