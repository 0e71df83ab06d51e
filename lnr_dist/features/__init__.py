"""Floor 7: the cached-features backend of stage 2: stage-1 features once per checkpoint, heads trained on them."""
