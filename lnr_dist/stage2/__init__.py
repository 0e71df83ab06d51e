"""Floor 5: what a stage-2 method trains on: its flip table from the inference job's outputs."""
