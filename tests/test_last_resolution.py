"""How ``ckpt_path="last"`` resolves when the folder changes under it: a candidate that goes away
between listing and loading, a committed file another program replaced, and the one definition of
where "last" looks that ``ckpthooks ls`` shares (ckpthooks._last_search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, ModelCheckpoint, TorchCheckpointIO
from ckpthooks._catalog import read_manifest
from ckpthooks._io import paths
from tests.cli_helpers import run_cli, run_json
from tests.helpers import TinyNet


def saved_at(root: Path, *steps: int, checkpoint_io: Any = None) -> Checkpointer:
    ckpt = Checkpointer(
        root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpts", save_top_k=-1)],
        checkpoint_io=checkpoint_io,
    ).track(model=TinyNet())
    for step in steps:
        ckpt.progress.global_step = step
        ckpt.save_checkpoint(root / "ckpts" / f"step={step}.ckpt")
    return ckpt


class PrunedWhileLoading(TorchCheckpointIO):
    """Another process prunes ``victim`` after "last" listed it and before it is read (a race seen
    on a loaded machine with a process saving into the same folder); it is deterministic here."""

    def __init__(self, root: Path, victim: Path) -> None:
        super().__init__()
        self.root, self.victim, self.pruned = root, paths.normalize(victim), False

    def load_checkpoint(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not self.pruned and paths.normalize(path) == self.victim:
            self.pruned = True
            other = Checkpointer(self.root, enable_checkpointing=False)
            assert other.remove_checkpoint(path)  # manifest first, then the data
        return super().load_checkpoint(path, *args, **kwargs)


def test_a_candidate_pruned_between_listing_and_loading_falls_back_to_the_next(tmp_path: Path) -> None:
    saved_at(tmp_path, 10, 20)
    newest = tmp_path / "ckpts" / "step=20.ckpt"
    io = PrunedWhileLoading(tmp_path, newest)
    report = saved_at(tmp_path, checkpoint_io=io).restore("last")
    assert io.pruned and not newest.exists()
    assert report is not None and report.global_step == 10
    assert report.path == str(tmp_path / "ckpts" / "step=10.ckpt")


def test_a_candidate_saved_again_between_listing_and_loading_is_loaded_as_it_is_now(tmp_path: Path) -> None:
    saved_at(tmp_path, 10, 20)
    newest = tmp_path / "ckpts" / "step=20.ckpt"

    class SavedAgain(TorchCheckpointIO):
        done = False

        def load_checkpoint(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            if not self.done and paths.normalize(path) == str(newest):
                self.done = True
                other = saved_at(tmp_path)
                other.progress.global_step = 30
                other.save_checkpoint(newest)  # the same name, committed again at a later step
            return super().load_checkpoint(path, *args, **kwargs)

    io = SavedAgain()
    report = saved_at(tmp_path, checkpoint_io=io).restore("last")
    assert io.done
    assert report is not None and report.path == str(newest) and report.global_step == 30


def replace_like_another_program(path: Path) -> None:
    """Write a Lightning-style file over a committed checkpoint, leaving its manifest as it was."""
    model = TinyNet()
    torch.save(
        {
            "epoch": 7,
            "global_step": 99,
            "pytorch-lightning_version": "2.6.0",
            "state_dict": model.state_dict(),
            "optimizer_states": [],
            "lr_schedulers": [],
            "loops": {},
            "callbacks": {},
            "padding": torch.zeros(64),  # another size than ckpthooks' file
        },
        path,
    )


def test_a_committed_file_replaced_by_another_program_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_at(tmp_path, 10, 20)
    replaced = tmp_path / "ckpts" / "step=20.ckpt"
    replace_like_another_program(replaced)
    report = saved_at(tmp_path).restore("last")
    assert report is not None and report.global_step == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(replaced) in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    (message,) = warnings
    assert "no longer counts" in message and "replaced after its commit" in message  # why
    assert f'"last" resolves to {tmp_path / "ckpts" / "step=10.ckpt"}' in message  # what instead
    assert "10 global steps older" in message
    assert f"ckpthooks convert --adopt {replaced} {replaced}" in message  # how to adopt it


def test_a_replaced_file_is_adopted_with_convert_as_the_warning_says(tmp_path: Path) -> None:
    saved_at(tmp_path, 10, 20)
    replaced = tmp_path / "ckpts" / "step=20.ckpt"
    replace_like_another_program(replaced)
    refused = run_cli("convert", str(replaced), str(replaced))
    assert refused.exit_code == 1 and "replaced after it was committed" in refused.output
    assert f"ckpthooks convert --adopt {replaced} {replaced}" in refused.output  # the way out
    result = run_cli("convert", "--adopt", str(replaced), str(replaced))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(str(replaced))
    assert manifest is not None and manifest.global_step == 99 and manifest.size == replaced.stat().st_size
    report = saved_at(tmp_path).restore("last")
    assert report is not None and report.path == str(replaced) and report.global_step == 99
    # ls knows the policy's folder from --dirpath here: every file in it was saved by hand
    assert run_json("ls", str(tmp_path))["last"] is None
    assert run_json("ls", str(tmp_path), "--dirpath", str(tmp_path / "ckpts"))["last"] == str(replaced)


def test_adopting_into_another_file_leaves_the_replaced_one_as_it_is(tmp_path: Path) -> None:
    saved_at(tmp_path, 10, 20)
    replaced = tmp_path / "ckpts" / "step=20.ckpt"
    replace_like_another_program(replaced)
    adopted = tmp_path / "ckpts" / "adopted.ckpt"
    result = run_cli("convert", "--adopt", str(replaced), str(adopted))
    assert result.exit_code == 0, result.output
    assert adopted.read_bytes() == replaced.read_bytes()
    report = saved_at(tmp_path).restore("last")
    assert report is not None and report.path == str(adopted) and report.global_step == 99


def test_ls_flags_as_last_what_ckpt_path_last_resumes_from(tmp_path: Path) -> None:
    # a file saved by hand into <root>/checkpoints belongs to the run, for ls and for the runtime
    manual = Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet())
    manual.progress.global_step = 5
    manual.save_checkpoint(tmp_path / "checkpoints" / "manual.ckpt")
    # a file of another run, in a subfolder of the root, counts for neither
    other = Checkpointer(tmp_path / "other-run", enable_checkpointing=False).track(model=TinyNet())
    other.progress.global_step = 50
    other.save_checkpoint(tmp_path / "other-run" / "late.ckpt")
    resumed = Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet())
    assert resumed.find_checkpoint("last") == str(tmp_path / "checkpoints" / "manual.ckpt")
    listing = run_json("ls", str(tmp_path))
    assert listing["last"] == resumed.find_checkpoint("last")
    flagged = [c["name"] for c in listing["checkpoints"] if "last" in c["flags"]]
    assert flagged == [str(Path("checkpoints") / "manual.ckpt")]
    assert {c["name"] for c in listing["checkpoints"]} >= {str(Path("other-run") / "late.ckpt")}  # still listed


def test_ls_prefers_a_full_checkpoint_over_a_newer_weights_only_one_like_the_runtime(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet())
    ckpt.progress.global_step = 5
    ckpt.save_checkpoint(tmp_path / "checkpoints" / "full.ckpt")
    ckpt.progress.global_step = 9
    ckpt.save_checkpoint(tmp_path / "checkpoints" / "weights.ckpt", weights_only=True)
    assert ckpt.find_checkpoint("last") == str(tmp_path / "checkpoints" / "full.ckpt")
    listing = run_json("ls", str(tmp_path))
    assert listing["last"] == str(tmp_path / "checkpoints" / "full.ckpt")
    assert json.dumps(listing)  # serializable as printed
