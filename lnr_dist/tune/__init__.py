"""Floor 8: the threshold sweep on Ray Tune."""
