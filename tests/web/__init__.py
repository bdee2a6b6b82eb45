"""Tests of hires_nst/web/."""
