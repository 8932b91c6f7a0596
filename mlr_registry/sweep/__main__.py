"""``python -m mlr_registry.sweep``: a grid of tracked runs on Ray (see ``cli.py``)."""

import sys

from mlr_registry.sweep.cli import main

sys.exit(main())
