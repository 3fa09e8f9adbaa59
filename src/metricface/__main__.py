"""``python -m metricface TOOL ...``: see :mod:`metricface.cli`."""

from metricface.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
