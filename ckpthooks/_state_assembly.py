"""State assembly and restore: the checkpoint dict built from what a checkpointer tracks, and put
back into it.

:func:`dump_checkpoint` asks every active state component, the callbacks, the model's and the
datamodule's own hooks and the plugins' ``on_save_checkpoint`` hook. :func:`restore_from_dict`
runs the load hooks, then restores in two phases: every component first *finds* its state
(missing, unexpected and incompatible state is collected, and a strict restore raises before
anything changes), then each found component *loads* it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpthooks._layout import NAMESPACE, namespace, take_explained_missing
from ckpthooks._store import check_format_version
from ckpthooks._version import FORMAT_VERSION, LIGHTNING_LAYOUT_VERSION, __version__
from ckpthooks.exceptions import IncompatibleStateError, MissingStateError, UnexpectedStateError

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._components import StateComponent

log = logging.getLogger(__name__)


@dataclass
class RestoreReport:
    """What :meth:`Checkpointer.restore` did."""

    path: str
    restored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    epoch: int = 0
    global_step: int = 0

    def summary(self) -> str:
        text = (
            f"restored {', '.join(self.restored) or 'nothing'} from {self.path} "
            f"(epoch {self.epoch}, global step {self.global_step})"
        )
        if self.missing:
            text += f"; missing: {', '.join(self.missing)}"
        if self.unexpected:
            text += f"; not restored: {', '.join(self.unexpected)}"
        return text


def dump_checkpoint(checkpointer: Checkpointer, weights_only: bool = False) -> dict[str, Any]:
    """Build the checkpoint dict (on every rank): components, then every on_save_checkpoint hook."""
    checkpoint: dict[str, Any] = {"pytorch-lightning_version": LIGHTNING_LAYOUT_VERSION}
    space = namespace(checkpoint)
    space.update(
        format_version=FORMAT_VERSION,
        version=__version__,
        plugins=checkpointer.host.plugin_versions(),
        weights_only=weights_only,
    )
    for component in checkpointer.components:
        if weights_only and not component.in_weights_only:
            continue
        if component.is_active(checkpointer):
            component.save_into(checkpointer, checkpoint)
    if not weights_only:
        for cb in checkpointer.callbacks:
            cb.on_save_checkpoint(checkpointer, checkpoint)
    for obj in (checkpointer.model, checkpointer.datamodule):
        hook = getattr(obj, "on_save_checkpoint", None)
        if callable(hook):
            hook(checkpoint)
    checkpointer.host.on_save_checkpoint(checkpointer, checkpoint)
    return checkpoint


#: What :func:`prepare_restore` made: component name -> (the value found, the prepared value).
Prepared = dict[str, tuple[Any, Any]]


def prepare_restore(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Prepared:
    """Run :meth:`StateComponent.prepare` of every active component that has one on what it finds
    in ``checkpoint``, changing nothing live (a restore calls this while the checksum is still
    being verified). :func:`restore_from_dict` uses each result whose value it finds unchanged."""
    from ckpthooks._components import StateComponent as Base

    prepared: Prepared = {}
    for component in checkpointer.components:
        if type(component).prepare is Base.prepare or not component.is_active(checkpointer):
            continue
        found = component.find(checkpointer, checkpoint)
        if found.present and not found.incompatible:
            prepared[component.name] = (found.value, component.prepare(checkpointer, found.value))
    return prepared


def restore_from_dict(
    checkpointer: Checkpointer, checkpoint: dict[str, Any], *, strict: bool | None = None,
    prepared: Prepared | None = None,
) -> RestoreReport:  # fmt: skip
    """Restore everything tracked from a checkpoint dict already in memory; ``prepared`` holds what
    :func:`prepare_restore` made of it already."""
    check_format_version(checkpoint, "the checkpoint")
    strict = checkpointer.strict if strict is None else strict
    for obj in (checkpointer.model, checkpointer.datamodule):
        hook = getattr(obj, "on_load_checkpoint", None)
        if callable(hook):
            hook(checkpoint)
    for cb in checkpointer.callbacks:
        cb.on_load_checkpoint(checkpointer, checkpoint)
    checkpointer.host.on_load_checkpoint(checkpointer, checkpoint)

    explained = take_explained_missing(checkpoint)
    report = RestoreReport(path="<memory>")
    plan: list[tuple[StateComponent, Any]] = []
    incompatible: list[str] = []
    known_names = set()
    for component in checkpointer.components:
        known_names.add(component.name)
        found = component.find(checkpointer, checkpoint)
        active = component.is_active(checkpointer)
        report.missing += found.missing
        report.unexpected += found.unexpected
        incompatible += found.incompatible
        if active and found.present:
            plan.append((component, found.value))
        elif active and component.on_missing != "ignore" and not found.missing:
            label = component.label(checkpointer)
            if component.on_missing == "error":
                report.missing.append(label)
            elif component.name not in explained:
                log.warning("the checkpoint has no %s; it is left as it is", label)
        elif found.present and not active and component.on_missing != "ignore":
            report.unexpected.append(component.label(checkpointer))
    saved_components = checkpoint.get(NAMESPACE, {}).get("components", {})
    report.unexpected += [f"component {name!r}" for name in sorted(saved_components) if name not in known_names]
    if incompatible:
        raise IncompatibleStateError(
            f"the checkpoint does not fit what is tracked: {'; '.join(incompatible)}. Was it "
            "saved from a model built with other hyperparameters? Nothing was restored."
        )
    if report.missing or report.unexpected:
        _report_mismatch(checkpoint, report, strict)
    checkpointer.restore_strict = strict
    ready: list[tuple[StateComponent, Any]] = []
    for component, value in plan:
        earlier = (prepared or {}).get(component.name)
        if earlier is not None and earlier[0] is value:
            ready.append((component, earlier[1]))
        else:
            ready.append((component, component.prepare(checkpointer, value)))
    for component, value in ready:
        component.load(checkpointer, value)
        if component.restores_state:
            report.restored.append(component.name)
    report.epoch, report.global_step = checkpointer.current_epoch, checkpointer.global_step
    return report


def _report_mismatch(checkpoint: dict[str, Any], report: RestoreReport, strict: bool) -> None:
    """Log what a non-strict restore leaves out; raise for a strict one."""
    weights_only_file = bool(checkpoint.get(NAMESPACE, {}).get("weights_only"))
    hint = (
        " The file was saved with save_weights_only=True, so it holds no training state: "
        "load it with Model.load_from_checkpoint, or resume from a full checkpoint."
        if weights_only_file
        else ""
    )
    if not strict:
        missing = ", ".join(report.missing) if report.missing else "none"
        unused = ", ".join(report.unexpected) if report.unexpected else "none"
        log.warning(
            "partial restore: state the checkpoint lacks (left as it was): %s; state in the "
            "checkpoint that nothing restored: %s", missing, unused,
        )  # fmt: skip
        return
    if report.missing:
        raise MissingStateError(
            f"the checkpoint lacks state for {', '.join(report.missing)}.{hint} Pass "
            "strict=False to restore what is there.",
            report.missing,
        )
    raise UnexpectedStateError(
        f"the checkpoint holds state nothing tracked can take: {', '.join(report.unexpected)}. "
        "Track the matching objects, or pass strict=False to leave it out.",
        report.unexpected,
    )
