"""The package version (one place: the package, the CLI's --version and pyproject.toml agree)."""

__version__ = "0.1.0"
