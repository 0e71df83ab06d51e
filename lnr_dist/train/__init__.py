"""Floor 6: the one trainer (stage 1, stage 2 on images) on Ray Train: recipes, epochs, metrics, calibration."""
