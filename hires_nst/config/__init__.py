"""Settings as plain data, no torch: what can be named (catalog), the resolved configuration and its
validation, presets, print sizes, region specs, the stage schedule, the render job record."""
