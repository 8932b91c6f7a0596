"""``python -m mlr_registry.report``: the paper's tables from MLflow runs (see ``cli.py``)."""

import sys

from mlr_registry.report.cli import main

sys.exit(main())
