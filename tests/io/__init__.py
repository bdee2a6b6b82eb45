"""Tests of hires_nst/io/."""
