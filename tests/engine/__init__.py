"""Tests of hires_nst/engine/."""
