"""Hooks that always come off: register them inside ``with Hooks() as hooks:`` and every one
is removed when the block ends, also on error."""

from __future__ import annotations

import contextlib


class Hooks(contextlib.ExitStack):
    """An ``ExitStack`` of hook handles. ``hooks.add(module.register_forward_hook(fn))``
    returns the handle and removes it when the ``with`` block is left."""

    def add(self, handle):
        self.callback(handle.remove)
        return handle


def removing(handles) -> Hooks:
    """``with removing(handles):`` removes hook handles registered already when the block ends."""
    hooks = Hooks()
    for handle in handles:
        hooks.add(handle)
    return hooks
