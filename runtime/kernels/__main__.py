"""``python -m tokenyard.runtime.kernels DIR``: build the CPU kernels into DIR ahead of time (container
images, which have no compiler at run time) and print the module's path, for ``TOKENYARD_CPU_KERNELS_PATH``."""

from __future__ import annotations

import sys
from pathlib import Path

from tokenyard.runtime.kernels import build


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(build(Path(argv[0]).resolve()).__file__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
