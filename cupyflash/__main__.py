"""``python -m cupyflash COMMAND [ARGS]``: each command is a module's ``main(argv)``, given the arguments that
follow the command (``python -m cupyflash COMMAND --help`` is that module's help)."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

COMMANDS = {  # command: (module, one line of help)
    "info": ("info", "versions, the GPUs CuPy sees with their limits, and the tiles the dispatcher picks "
                     "(works without a GPU)"),
    "selftest": ("selftest", "a quick check on this machine's GPU: small forward and backward problems against the "
                             "float64 reference"),
    "bench": ("bench", "the benchmark, as python -m cupyflash.bench (--plot CSV draws a CSV it wrote)"),
    "precompile": ("precompile", "compile kernels ahead of time into CuPy's disk cache, as python -m "
                                 "cupyflash.precompile"),
    "tune": ("tune", "time every forward tile candidate on this GPU, as python -m cupyflash.tune"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cupyflash", description="cupyflash: FlashAttention for CuPy "
                                     "arrays. `python -m cupyflash COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"cupyflash {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        # No option of its own ("\0": nothing looks like one): every argument, --help too, goes to the module
        sub = commands.add_parser(name, help=text, description=text, add_help=False, prefix_chars="\0")
        sub.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"{__package__}.{COMMANDS[args.command][0]}")
    status = module.main(args.args)
    return status if isinstance(status, int) else 0  # bench's main returns its rows


if __name__ == "__main__":
    sys.exit(main())
