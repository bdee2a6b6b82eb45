"""Tests of hires_nst/batch/."""
