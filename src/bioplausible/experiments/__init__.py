"""Many runs: presets (the papers' experiments as YAML files in this folder), jobs, sweeps and
their executors (local processes, Ray), hyperparameter search, reproduction and reports."""
