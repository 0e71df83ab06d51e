"""Floor 1: what every job shares: configs, atomic storage, logging, errors, the rank context, figures."""
