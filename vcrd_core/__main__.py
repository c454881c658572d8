"""``python -m vcrd_core``: the ``vcrd`` command line, where no ``vcrd`` script is installed (a venv
layered on another, a source checkout on ``PYTHONPATH``)."""

from __future__ import annotations

import sys

from vcrd_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
