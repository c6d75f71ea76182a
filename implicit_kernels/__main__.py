"""``python -m implicit_kernels <command> [options]``.

Commands (each module is imported only when its command runs):

- ``demo``: decode an image through every available backend (:mod:`.apps.demo`);
- ``info``: versions, build and backend availability (:mod:`.info`);
- ``cost``: parameters and MACs of a model (:mod:`.cost`);
- ``upscale``: super-resolve an image with a trained model (:mod:`.apps.upscale`);
- ``train``: train a model from a YAML config (:mod:`.apps.train`);
- ``eval``: PSNR of models and bicubic over HR images (:mod:`.apps.evaluate`);
- ``export``: encoder + decoder to ONNX (:mod:`.apps.export`);
- ``build``: compile the C++ extension for the installed torch now (:mod:`._jit`).

The console script ``implicit-sr`` is this dispatcher (``implicit-sr upscale ...``).
"""
from __future__ import annotations

import importlib
import sys

#: Command -> (module with ``main(argv) -> int``, one-line help).
COMMANDS = {
    "demo": ("implicit_kernels.apps.demo", "decode an image through every available backend"),
    "info": ("implicit_kernels.info", "versions, build and backend availability"),
    "cost": ("implicit_kernels.cost", "parameters and MACs of a model"),
    "upscale": ("implicit_kernels.apps.upscale", "super-resolve an image with a trained model"),
    "train": ("implicit_kernels.apps.train", "train a model from a YAML config"),
    "eval": ("implicit_kernels.apps.evaluate", "PSNR of models and bicubic over HR images"),
    "build": ("implicit_kernels._jit", "compile the C++ extension for the installed torch now"),
    "export": ("implicit_kernels.apps.export", "encoder + decoder to ONNX (torch backend)"),
}


def _usage() -> str:
    lines = ["usage: python -m implicit_kernels <command> [options]", "", "commands:"]
    lines += [f"  {name:<7} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n'python -m implicit_kernels <command> --help' describes a command's options.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Dispatch to a command's ``main``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    name = COMMANDS[command][0]
    try:
        module = importlib.import_module(name)
        return module.main(rest) or 0
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name + ".").startswith(exc.name + "."):
            raise  # a module the command needs, not the command's own (or its package)
        print(f"command {command!r} is not available in this installation", file=sys.stderr)
        return 2
    except ImportError as exc:  # e.g. implicit_kernels.apps without the `models` package
        print(f"{command} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C while torch is imported, or in a command that does not handle it itself.
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
