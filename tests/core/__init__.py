"""Tests of hires_nst/core/."""
