"""Tests of hires_nst/runtime/."""
