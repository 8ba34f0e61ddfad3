"""Shared test configuration: every test needs root (the suite runs real kernel parts)."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="kube-xdp tests need root (netns, bpffs, XDP); run 'make test' as root")
        for item in items:
            if "unit" not in item.nodeid.split("/"):
                item.add_marker(skip)
