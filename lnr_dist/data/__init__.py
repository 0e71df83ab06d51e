"""Floor 2: image data: the `data:` section, split files, the mini and CIFAR-LT sets, the two loaders."""
