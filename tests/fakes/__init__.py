"""Test doubles: the in-memory kernel (`kernel.FakeKernel`). Never imported by the product."""

from .kernel import FakeKernel

__all__ = ["FakeKernel"]
