"""Floor 4: running work on Ray workers: the cluster and worker groups, shared row files, deliberate faults."""
