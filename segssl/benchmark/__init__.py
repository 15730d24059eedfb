"""Label-efficiency benchmark suites: rows, runner and report (see benchmarks/README.md)."""
