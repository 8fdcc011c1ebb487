"""CaImAn methods this layer does not provide, as methods that say so.

:func:`add_unsupported` gives a class one method per entry of a table
``{name: nearest}``; each raises ``NotImplementedError`` naming the call and
the nearest thing gpu_cnmf has, so a CaImAn script never meets a silent
no-op or an ``AttributeError``.
"""
from __future__ import annotations

__all__ = ["add_unsupported"]


def _method(owner, name, nearest):
    def method(self, *args, **kwargs):
        raise NotImplementedError(f"{owner}.{name} is not available in gpu_cnmf; "
                                  f"nearest: {nearest}")
    method.__name__ = name
    return method


def add_unsupported(cls, table, owner=None):
    """Set on ``cls`` a method for each ``name: nearest`` of ``table`` that
    raises ``NotImplementedError`` (``owner``: the name in the message,
    ``cls.__name__`` by default)."""
    owner = owner or cls.__name__
    for name, nearest in table.items():
        setattr(cls, name, _method(owner, name, nearest))
