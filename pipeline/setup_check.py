"""Import check run at the end of `make setup`: fails loudly if the environment is broken."""

from __future__ import annotations

import importlib
import sys

REQUIRED = ("torch", "transformers", "ray", "vllm")


def main() -> int:
    versions = {}
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # any import failure means a broken environment
            print(f"setup check FAILED: cannot import {name}: {exc!r}", file=sys.stderr)
            print("Fix: `make clean-venv && make setup`.", file=sys.stderr)
            return 1
        versions[name] = getattr(module, "__version__", "?")
    print("environment ok: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
