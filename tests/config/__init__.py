"""Tests of hires_nst/config/."""
