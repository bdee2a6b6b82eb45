"""Where the work runs: devices, precision and memory placement, torch.distributed ranks, host-sync counting."""
