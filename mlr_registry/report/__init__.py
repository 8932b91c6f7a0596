"""The paper's tables and plots from MLflow runs: ``python -m mlr_registry.report --benchmark atari100k``.

From Python: ``build_report(ReportOptions(RunFilter("atari100k", uri), out_dir))``; see
:mod:`mlr_registry.report.build`. Submodules are imported lazily: importing this package is
cheap and needs neither MLflow nor rliable.
"""
