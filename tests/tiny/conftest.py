"""Shared fixtures of the tiny-checkpoint tests: every family is built once per session, in one root.

A test module names its family in a module constant `FAMILY`; its `folder` fixture is then that
family's built folder.
"""

from __future__ import annotations

import pytest

from services.tiny import ensure


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """Factory: family -> its folder, built on first request (ensure() reuses it afterwards)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    return lambda family: ensure(family, root=root)


@pytest.fixture(scope="module")
def folder(request, tiny_folder):
    return tiny_folder(request.module.FAMILY)
