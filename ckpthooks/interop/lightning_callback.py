"""``CkpthooksState``: a Lightning callback for the state that only ckpthooks keeps.

Lightning's ``Trainer`` restores a ckpthooks file without help (model, optimizers, schedulers, AMP
scaler, datamodule, epoch, global step, ``ModelCheckpoint`` state), but it does not know ckpthooks'
random generator states and in-epoch data position. Every ckpthooks file carries an entry for this
callback, so a Trainer without it says so (Lightning warns "Please add the following callbacks:
['CkpthooksState']"). With it::

    from ckpthooks.interop.lightning_callback import CkpthooksState

    trainer = Trainer(callbacks=[CkpthooksState(), ...])
    trainer.fit(model, ckpt_path="run/checkpoints/last.ckpt")   # a ckpthooks file

the random generator states are restored, a :class:`~ckpthooks.interop.LightningInteropWarning`
names what Lightning still cannot restore, and the checkpoints the Trainer writes carry the random
generator states for a ckpthooks loop resuming from them. Importing this module imports Lightning
(``lightning.pytorch``).
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from ckpthooks._layout import NAMESPACE, namespace
from ckpthooks.interop import LightningInteropWarning
from ckpthooks.interop._lightning_layout import DOCS, STATE_CALLBACK_KEY


class CkpthooksState(Callback):
    """Restores ckpthooks' random generator states in Lightning, and saves them for ckpthooks.

    Args:
        restore_rng_state: restore the generator states of a ckpthooks file when the Trainer resumes.
        save_rng_state: write the generator states into the Trainer's checkpoints (where a
            ckpthooks loop restores them).
    """

    def __init__(self, restore_rng_state: bool = True, save_rng_state: bool = True) -> None:
        self.restore_rng_state = restore_rng_state
        self.save_rng_state = save_rng_state

    @property
    def state_key(self) -> str:
        return STATE_CALLBACK_KEY

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        space = checkpoint.get(NAMESPACE)
        if not isinstance(space, dict):
            return  # a Lightning file: nothing of ckpthooks' to restore
        components = dict(space.get("components") or {})
        rng = components.pop("rng", None)
        if rng and self.restore_rng_state:
            from ckpthooks._rng import restore_rng_states

            restore_rng_states(rng)
        elif "format_version" in space:
            warnings.warn(
                "the ckpthooks checkpoint holds no random generator states to restore"
                if not rng
                else "restore_rng_state=False: the checkpoint's random generator states are not restored",
                LightningInteropWarning,
                stacklevel=2,
            )
        lost = [f"state component {name!r}" for name in sorted(components)]
        loop = space.get("loop")
        if isinstance(loop, dict) and not loop.get("epoch_finished") and loop.get("batch_idx"):
            lost.append(
                f"the exact data position ({loop['batch_idx']} batches of epoch {loop['epoch']} were "
                "done: Lightning runs the rest of that epoch by count, and a data loader without its "
                "own state starts over instead of skipping them)"
            )
        if lost:
            warnings.warn(
                f"Lightning does not restore these parts of the ckpthooks checkpoint: {'; '.join(lost)} (see {DOCS})",
                LightningInteropWarning,
                stacklevel=2,
            )

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.save_rng_state:
            from ckpthooks._rng import collect_rng_states

            namespace(checkpoint)["components"]["rng"] = collect_rng_states()
