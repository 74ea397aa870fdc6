"""Built-in training objectives (registered as ``xvec.losses`` entry points in pyproject.toml)."""
