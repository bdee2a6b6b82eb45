"""The feature networks: weights and where they come from, the VGG extractor, other backbones, pooling."""
