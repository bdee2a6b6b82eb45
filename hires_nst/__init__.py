"""hires-nst: print-size neural style transfer (Gatys et al.) over a resolution pyramid."""

__version__ = "0.1.0"
