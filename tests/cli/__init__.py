"""Tests of hires_nst/cli/."""
