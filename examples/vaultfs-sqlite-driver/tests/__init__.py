"""Tests of the sqlite driver.

A package, so that pytest can collect this test_conformance.py in the same run as
vaultfs's own tests/test_conformance.py without the two module names clashing.
"""
