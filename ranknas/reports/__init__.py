"""The reports layer: what a study leaves behind.

* :mod:`~ranknas.reports.pareto`: non-dominated sorting, Pareto fronts, hypervolume (Optuna's
  exact implementation) with a documented reference point, anytime curves;
* :mod:`~ranknas.reports.tracking`: MLflow tracking (embedded SQLite store or a server URI);
* :mod:`~ranknas.reports.report`: the self-contained HTML report with its PNGs;
* :mod:`~ranknas.reports.export` and :mod:`~ranknas.reports.loading`: exported front models and
  ``ranknas.load``.

Submodules are imported on use, so that MLflow and matplotlib load only when needed.
"""
