"""Floor 5: stage-2 methods: the registry (registry.py), their label policies and flip tables from the inference
job's outputs (flip_sources.py), feature oversampling (oversample.py)."""
