"""Interoperability with other training frameworks' checkpoint files.

:mod:`ckpthooks.interop._lightning_layout` writes the parts of Lightning's layout that ckpthooks does
not otherwise need (the ``loops`` progress and Lightning-keyed ``ModelCheckpoint`` state) and
translates a file written by Lightning's ``Trainer`` into ckpthooks' layout when it is restored.
Nothing here imports Lightning; :mod:`ckpthooks.interop.lightning_callback` (which does) is only
needed inside a Lightning ``Trainer``.
"""

from __future__ import annotations


class LightningInteropWarning(UserWarning):
    """Part of a checkpoint cannot cross between Lightning and ckpthooks; the message says which."""
