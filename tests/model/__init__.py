"""Tests of hires_nst/model/."""
