"""asteria-bench: the command line and the glue (configuration, run directories,
the training job). ``asteria_bench.cli`` is the entry point."""

__version__ = "0.1.0"
