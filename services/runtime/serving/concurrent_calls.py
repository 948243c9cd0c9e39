"""Two calls at once on one model instance: what the modeling code keeps between steps, made per thread.

Some modeling code keeps per-call state on the module itself: Qwen3-ASR's thinker stores `rope_deltas`
(one per batch row) at prefill and reads it at every decode step, so two `generate` calls on one instance
in two threads read each other's — wrong positions, or a shape error when their batch sizes differ.
`thread_local_attributes(root, names)` gives every module under `root` holding such an attribute a class
of its own (a subclass, for that instance only) on which the attribute is a per-thread value; each call
runs in one thread, so it keeps its own. The package's code is unchanged and other instances are not
touched.

`Serialized(obj, methods)` forwards attribute access to `obj`; calls of `methods` go one at a time. A fast
tokenizer changes its padding/truncation state on every padded call and fails with "Already borrowed"
when two threads call it at once.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable


class _PerThread:
    """A data descriptor: each thread sees its own value (the instance's value until it sets one)."""

    def __init__(self, name: str):
        self.name = name
        self.local = threading.local()

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(self.local, "value", obj.__dict__.get(f"_{self.name}_initial"))

    def __set__(self, obj, value) -> None:
        self.local.value = value


def thread_local_attributes(root, names: Iterable[str]) -> int:
    """Make `names` per-thread on every module under `root` (a torch module) that has them as plain
    attributes; returns how many modules were changed (0: nothing to do, e.g. a package that no longer
    keeps such state)."""
    names = tuple(names)
    changed = 0
    for module in root.modules():
        held = [n for n in names if n in module.__dict__]
        if not held:
            continue
        cls = type(module)
        per = type(f"{cls.__name__}PerThread", (cls,), {n: _PerThread(n) for n in held})
        for n in held:
            module.__dict__[f"_{n}_initial"] = module.__dict__.pop(n)
        module.__class__ = per
        changed += 1
    return changed


class Serialized:
    def __init__(self, obj: Any, methods: Iterable[str] = ("__call__",)):
        self._obj = obj
        self._methods = frozenset(methods)
        self._lock = threading.RLock()

    def __call__(self, *args, **kwargs):
        if "__call__" not in self._methods:
            return self._obj(*args, **kwargs)
        with self._lock:
            return self._obj(*args, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self._obj, name)
        if name not in self._methods or not callable(value):
            return value

        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked
