"""Pure numerics on tensors and sizes: losses, the guarded L-BFGS, iterate averaging, colour, region
guides, tile and band geometry, the memory model."""
