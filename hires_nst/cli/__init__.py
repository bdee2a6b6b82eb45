"""The ``hires-nst`` command line: options, help panels, progress bars; the only layer that prints and exits."""
