"""Floor 6: the inference job (predictions -> class statistics -> flips) and the flips job on saved predictions."""
