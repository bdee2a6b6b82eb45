"""Files in and out: images, checkpoints and locks, what a run may write, traces, previews, animations,
contact sheets, progress lines for logs."""
