"""The tests, in folders that mirror the package's (tests/engine/ pins hires_nst/engine/, ...). Each folder is
a package, so that two folders may hold test modules of one name; shared helpers live in conftest.py
fixtures and in tests/helpers/, never in another test module."""
