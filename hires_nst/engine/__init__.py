"""One render from plan to files: the stage plan, the objective (untiled, tiled, spread over ranks), the
optimiser loop, the pyramid, regions, outputs, work dirs and resume, the memory measurement."""
