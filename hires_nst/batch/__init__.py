"""Many renders: job files, running them one after another, in parallel workers or on a Ray cluster."""
