"""Built-in plugin: checkpoints that move between Lightning and ckpthooks.

On save, adds what Lightning's ``Trainer.fit(ckpt_path=...)`` needs beyond ckpthooks' own keys
(``ModelCheckpoint`` state under Lightning's state keys, empty optimizer/scheduler lists; the
``loops`` progress is written by the progress component). On load, drops those additions from a
ckpthooks file, and rewrites a file written by Lightning's ``Trainer`` into ckpthooks' layout, with
a warning for each part that does not cross over. See :mod:`ckpthooks.interop._lightning_layout`.
Block it (``CKPTHOOKS_PLUGINS_BLOCK=builtin-lightning``) to write and read ckpthooks' layout only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer


@hookimpl(trylast=True)
def on_save_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    from ckpthooks.interop._lightning_layout import add_lightning_layout

    add_lightning_layout(checkpointer, checkpoint)


@hookimpl(tryfirst=True)
def on_load_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    from ckpthooks.interop._lightning_layout import (
        drop_lightning_additions,
        is_ckpthooks_file,
        is_lightning_file,
        translate_lightning_checkpoint,
    )

    if is_ckpthooks_file(checkpoint):
        drop_lightning_additions(checkpoint)
    elif is_lightning_file(checkpoint):
        translate_lightning_checkpoint(checkpointer, checkpoint)
