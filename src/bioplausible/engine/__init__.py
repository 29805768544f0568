"""One training run in this process: the loop, its config, run directory, runtime and loggers."""
