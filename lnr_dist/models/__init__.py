"""Floor 2: the network (features + classifier + LWS), its losses and its complete atomic checkpoints."""
