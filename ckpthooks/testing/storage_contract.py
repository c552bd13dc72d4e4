"""The storage contract: one pytest class that any :class:`~ckpthooks.CheckpointIO` runs by subclassing.

A storage backend is trusted with the only copy of a training run. This class checks what the runtime
relies on: exact round trips of real checkpoints, a truthful :class:`~ckpthooks.SaveResult`, atomic
overwrites, specific errors for missing and corrupt files, weights-only loading, removal, and an end
to end save, verify and restore through a :class:`~ckpthooks.Checkpointer`::

    import pytest
    from ckpthooks.testing.storage_contract import CheckpointIOContract
    from my_package import MyCheckpointIO

    class TestMyCheckpointIO(CheckpointIOContract):
        @pytest.fixture
        def checkpoint_io(self):
            return MyCheckpointIO()

    class TestMyCheckpointIOInMemory(TestMyCheckpointIO):
        @pytest.fixture
        def tmp_url(self):
            with fresh_memory_url() as url:  # or an s3:// prefix of a test bucket
                yield url

The class name has no ``Test`` prefix, so pytest collects it only through a subclass whose name has
one; installing ckpthooks adds no tests to anybody's suite. Fixtures a subclass may override:

``checkpoint_io``
    The backend under test (required).
``tmp_url``
    An empty folder or URL prefix the test may write to; a local ``tmp_path`` by default.
``storage_options``
    fsspec options for ``tmp_url`` (``None`` by default).
``plugin_host``
    The :class:`~ckpthooks.PluginHost` of the end-to-end test: built-in plugins only by default, so
    the result does not depend on what else is installed.

Class attributes switch off checks a backend cannot honour (and document that it cannot):

``supports_pickle``
    ``load_checkpoint(weights_only=False)`` unpickles arbitrary objects (``torch.save`` formats). When
    false, the contract instead checks that a pickle is never unpickled, even with ``weights_only=False``.
``preserves_storage_sharing``
    Tensors that shared storage when saved share it again after loading (as with ``torch.save``).
``atomic_overwrite``
    Saving over an existing checkpoint replaces it atomically: readers see the old file or the new
    one, never part of one, and a failed save leaves the old one readable. A temporary sibling plus
    a rename does this on local disks, and a streamed upload to S3 or GCS becomes visible only when
    complete; fsspec's ``memory://`` filesystem, however, publishes a file while it is being written.
``returns_save_result``
    ``save_checkpoint`` returns a :class:`~ckpthooks.SaveResult` (Lightning-style backends return
    ``None``; the runtime then asks the storage for the size).
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from torch import nn

from ckpthooks._io import paths
from ckpthooks._io.base import CheckpointIO, SaveResult
from ckpthooks._io.hashing import available_algorithms, folder_algorithm, folder_base, hash_stream
from ckpthooks._io.location import Location
from ckpthooks._plugin_host import PluginHost
from ckpthooks.exceptions import CheckpointNotFoundError, CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "UNPICKLED",
    "CheckpointIOContract",
    "PickleProbe",
    "assert_same_checkpoint",
    "fresh_memory_url",
    "realistic_checkpoint",
]


# --------------------------------------------------------------------------- what is saved


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        inputs = torch.randn(16, 4, generator=generator)
        targets = torch.randn(16, 2, generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()


def _trained(seed: int, steps: int = 2) -> tuple[nn.Module, torch.optim.Optimizer]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    _train_steps(model, optimizer, steps, seed)
    return model, optimizer


def realistic_checkpoint(seed: int = 0) -> dict[str, Any]:
    """A checkpoint laid out like Lightning's, with every kind of leaf a real one holds.

    A trained model's ``state_dict`` (an ``OrderedDict`` with ``_metadata``, a BatchNorm's 0-d
    ``int64`` counter), Adam state (integer keys, tuples, ``None``), an LR scheduler, tensors of
    several dtypes, 0-d, empty and non-contiguous tensors, tensors sharing storage, and plain Python
    values including large integers, ``-0.0``, non-finite floats and awkward dictionary keys.
    """
    model, optimizer = _trained(seed, steps=1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    _train_steps(model, optimizer, 1, seed + 2)
    scheduler.step()
    generator = torch.Generator().manual_seed(seed + 1)
    base = torch.randn(6, 8, generator=generator)
    shared = torch.arange(12, dtype=torch.float32)
    floats = torch.randn(5, generator=generator)
    floats[1] = math.nan
    floats[2] = -math.inf
    floats[3] = -0.0
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 3}}, "state_dict": {}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {"best_model_score": None}},
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "layers": [4, 8, 2], "name": "tiny", "dropout": 0.0},
        "dtypes": {
            "float32": floats,
            "float64": torch.randn(3, 2, dtype=torch.float64, generator=generator),
            "float16": torch.randn(7, generator=generator).to(torch.float16),
            "bfloat16": torch.randn(3, 5, generator=generator).to(torch.bfloat16),
            "int64": torch.tensor([0, -1, 2**62, -(2**63), 2**63 - 1], dtype=torch.int64),
            "int32": torch.tensor([7, -(2**31)], dtype=torch.int32),
            "int16": torch.tensor([-3, 300], dtype=torch.int16),
            "int8": torch.tensor([-128, 127], dtype=torch.int8),
            "uint8": torch.tensor([0, 255, 17], dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "complex64": torch.tensor([1 + 2j, -0.5j], dtype=torch.complex64),
        },
        "shapes": {
            "scalar": torch.tensor(3.25),
            "int_scalar": torch.tensor(5, dtype=torch.int64),
            "empty": torch.empty(0),
            "empty_2d": torch.zeros(0, 3, dtype=torch.bfloat16),
            "transposed": base.t(),
            "strided": base[:, ::3],
            "sliced": base[2:4],
            "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        },
        "shared": {"whole": shared, "view": shared[3:7], "reshaped": shared.view(3, 4), "again": shared},
        "python": {
            "int": 7,
            "negative": -12,
            "big_int": 2**70,
            "float": 0.1,
            "integral_float": 2.0,
            "tiny_float": 5e-324,
            "negative_zero": -0.0,
            "inf": math.inf,
            "minus_inf": -math.inf,
            "nan": math.nan,
            "true": True,
            "false": False,
            "none": None,
            "str": 'héllo ✓ \x00 "quoted"',
            "empty_str": "",
            "tuple": (1, "a", None, (2.5,)),
            "empty_tuple": (),
            "list": [[1, 2], [], [3.5, "x"], None],
            "int_keys": {0: "zero", 1: "one", -5: "minus five"},
            "mixed_keys": {1: "int", "1": "str", 1.5: "float", None: "none", (1, 2): "tuple", False: "bool"},
            "awkward_str_keys": {"val/loss": 0.5, "": 1, "$": 2, "__metadata__": 3, "a.b": 4},
            "empty_dict": {},
        },
    }


# --------------------------------------------------------------------------- comparing


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor (so NaN equals NaN and -0.0 differs from 0.0)."""
    flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return flat.view(torch.uint8)


def _same_float(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == expected and math.copysign(1.0, actual) == math.copysign(1.0, expected)


def assert_same_checkpoint(actual: Any, expected: Any, where: str = "checkpoint") -> None:
    """Assert ``actual`` is ``expected`` rebuilt exactly: same types, dict key types and order,
    tensor dtypes, shapes, devices and bytes, floats bit for bit (NaN equals NaN, ``-0.0`` is not
    ``0.0``), and an ``OrderedDict``'s ``_metadata``."""
    kind = type(expected)
    assert type(actual) is kind, f"{where}: expected a {kind.__name__}, got a {type(actual).__name__}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert actual.device == expected.device, f"{where}: device {actual.device} != {expected.device}"
        assert actual.requires_grad == expected.requires_grad, f"{where}: requires_grad differs"
        assert torch.equal(_bits(actual), _bits(expected)), f"{where}: the tensor's values differ"
    elif isinstance(expected, dict):
        actual_keys = [(type(k), k) for k in actual]
        expected_keys = [(type(k), k) for k in expected]
        assert actual_keys == expected_keys, f"{where}: keys {actual_keys} != {expected_keys}"
        for key, value in expected.items():
            assert_same_checkpoint(actual[key], value, f"{where}[{key!r}]")
        if isinstance(expected, collections.OrderedDict):
            assert getattr(actual, "_metadata", None) == getattr(expected, "_metadata", None), (
                f"{where}: the OrderedDict's _metadata (module versions) was not kept"
            )
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for index, (got, want) in enumerate(zip(actual, expected)):
            assert_same_checkpoint(got, want, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert _same_float(actual, expected), f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, complex):
        assert _same_float(actual.real, expected.real) and _same_float(actual.imag, expected.imag), (
            f"{where}: {actual!r} != {expected!r}"
        )
    elif isinstance(expected, (set, frozenset)):
        assert sorted(map(repr, actual)) == sorted(map(repr, expected)), f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


# --------------------------------------------------------------------------- pickles


#: Tokens of every :class:`PickleProbe` that was unpickled in this process.
UNPICKLED: list[str] = []


def _unpickle_probe(token: str) -> PickleProbe:
    UNPICKLED.append(token)
    return PickleProbe(token)


class PickleProbe:
    """An arbitrary (importable) object: unpickling it records its token in :data:`UNPICKLED`."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _unpickle_probe, (self.token,)


# --------------------------------------------------------------------------- storage helpers


@contextlib.contextmanager
def fresh_memory_url() -> Iterator[str]:
    """A unique, empty ``memory://`` folder, deleted afterwards."""
    import fsspec

    url = f"memory://ckpthooks-contract-{uuid.uuid4().hex}"
    try:
        yield url
    finally:
        fs = fsspec.filesystem("memory")
        with contextlib.suppress(FileNotFoundError):
            fs.rm(paths.fs_path(fs, url), recursive=True)


def _write_bytes(url: str, data: bytes, storage_options: Mapping[str, Any] | None) -> None:
    fs = paths.filesystem(url, storage_options)
    fs.makedirs(paths.fs_path(fs, paths.dirname(url)), exist_ok=True)
    fs.pipe_file(paths.fs_path(fs, url), data)


def _read_bytes(url: str, storage_options: Mapping[str, Any] | None) -> bytes:
    fs = paths.filesystem(url, storage_options)
    data: bytes = fs.cat_file(paths.fs_path(fs, url))
    return data


def _exists(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    fs = paths.filesystem(url, storage_options)
    return bool(fs.exists(paths.fs_path(fs, url)))


def _listing(folder: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    fs = paths.filesystem(folder, storage_options)
    try:
        entries = fs.ls(paths.fs_path(fs, folder), detail=False)
    except FileNotFoundError:
        return []
    return sorted(paths.basename(str(entry)) for entry in entries)


# --------------------------------------------------------------------------- the contract


class CheckpointIOContract:
    """The tests every :class:`~ckpthooks.CheckpointIO` should pass; see the module docstring."""

    supports_pickle: bool = True
    preserves_storage_sharing: bool = True
    atomic_overwrite: bool = True
    returns_save_result: bool = True

    # ------------------------------------------------------------------ fixtures to override

    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        """The backend under test: every subclass overrides this fixture (a required override)."""
        pytest.fail(
            f"{type(self).__name__} must override the checkpoint_io fixture to return the backend under test"
        )

    @pytest.fixture
    def tmp_url(self, tmp_path: Any) -> str:
        return str(tmp_path)

    @pytest.fixture
    def storage_options(self) -> Mapping[str, Any] | None:
        return None

    @pytest.fixture
    def plugin_host(self) -> PluginHost:
        return PluginHost(load_entry_points=False)

    # ------------------------------------------------------------------ round trips

    def test_realistic_checkpoint_round_trips_exactly(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        expected = realistic_checkpoint()
        path = paths.join(tmp_url, "epoch=3-step=1200.ckpt")
        checkpoint_io.save_checkpoint(expected, path, storage_options=storage_options)
        loaded = checkpoint_io.load_checkpoint(path, storage_options=storage_options)
        assert_same_checkpoint(loaded, expected)

    def test_saving_does_not_change_the_checkpoint_in_memory(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        checkpoint = realistic_checkpoint()
        checkpoint_io.save_checkpoint(checkpoint, paths.join(tmp_url, "a.ckpt"), storage_options=storage_options)
        assert_same_checkpoint(checkpoint, realistic_checkpoint())
        assert checkpoint["shapes"]["transposed"].is_contiguous() is False
        assert _shares_storage(checkpoint["shared"]["view"], checkpoint["shared"]["whole"])

    def test_every_weights_only_type_round_trips(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        expected = {
            "bytes": b"\x00\xff\x80 bytes",
            "bytearray": bytearray(b"\x01\x02"),
            "complex": complex(1.5, -math.inf),
            "complex_nan": complex(math.nan, 0.0),
            "set": {1, "two", 3.0, None},
            "size": torch.Size([2, 0, 3]),
            "dtype": torch.bfloat16,
            "device": torch.device("cpu"),
            "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
        }
        path = paths.join(tmp_url, "types.ckpt")
        checkpoint_io.save_checkpoint(expected, path, storage_options=storage_options)
        assert_same_checkpoint(checkpoint_io.load_checkpoint(path, storage_options=storage_options), expected)

    def test_tensors_that_shared_storage_still_share_it(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        if not self.preserves_storage_sharing:
            pytest.skip(f"{type(self).__name__}.preserves_storage_sharing is False")
        path = paths.join(tmp_url, "shared.ckpt")
        checkpoint_io.save_checkpoint(realistic_checkpoint(), path, storage_options=storage_options)
        shared = checkpoint_io.load_checkpoint(path, storage_options=storage_options)["shared"]
        for name in ("view", "reshaped", "again"):
            assert _shares_storage(shared[name], shared["whole"]), f"{name} no longer shares storage"
        shared["whole"][4] = -1.0
        assert shared["view"][1].item() == -1.0

    def test_save_creates_missing_parent_folders(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "run", "version_0", "checkpoints", "last.ckpt")
        checkpoint_io.save_checkpoint({"step": 1}, path, storage_options=storage_options)
        assert checkpoint_io.load_checkpoint(path, storage_options=storage_options) == {"step": 1}

    # ------------------------------------------------------------------ what save reports

    def test_save_result_reports_the_size_and_checksum_of_the_stored_bytes(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "sized.ckpt")
        result = checkpoint_io.save_checkpoint(realistic_checkpoint(), path, storage_options=storage_options)
        if result is None and not self.returns_save_result:
            return
        assert isinstance(result, SaveResult), f"save_checkpoint returned {result!r}, not a SaveResult"
        base = folder_base(result.algorithm) if result.checksum is not None and result.algorithm else None
        if base is not None:  # a folder checkpoint (sharded): its files, each hashed while written
            location = Location.of(path, storage_options)
            assert (result.size, result.checksum) == (location.stored_size(), location.digest(folder_algorithm(base)))
            assert result.size > 0
            return
        stored = _read_bytes(path, storage_options)
        assert result.size == len(stored) > 0
        if result.checksum is not None:
            assert result.algorithm in available_algorithms()
            assert result.algorithm is not None
            assert (result.size, result.checksum) == hash_stream([stored], result.algorithm)

    # ------------------------------------------------------------------ overwriting

    def test_save_overwrites_an_existing_checkpoint(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "last.ckpt")
        big = {"step": 1, "weights": torch.randn(256, 64)}
        small = {"step": 2, "weights": torch.ones(2)}
        checkpoint_io.save_checkpoint(big, path, storage_options=storage_options)
        files = _listing(tmp_url, storage_options)
        assert "last.ckpt" in files
        result = checkpoint_io.save_checkpoint(small, path, storage_options=storage_options)
        assert_same_checkpoint(checkpoint_io.load_checkpoint(path, storage_options=storage_options), small)
        if isinstance(result, SaveResult):
            assert result.size == len(_read_bytes(path, storage_options))
        assert _listing(tmp_url, storage_options) == files, "overwriting left other files behind"

    def test_a_failed_save_leaves_the_previous_checkpoint_and_no_stray_files(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "last.ckpt")
        previous = {"step": 1, "weights": torch.arange(1000.0)}
        checkpoint_io.save_checkpoint(previous, path, storage_options=storage_options)
        before = _listing(tmp_url, storage_options)
        unsaveable = {"step": 2, "weights": torch.zeros(1000), "callback": _Unsaveable()}
        with pytest.raises(Exception):  # noqa: B017 - any error, as long as the old file survives
            checkpoint_io.save_checkpoint(unsaveable, path, storage_options=storage_options)
        assert _listing(tmp_url, storage_options) == before, "the failed save left files behind"
        if self.atomic_overwrite:
            loaded = checkpoint_io.load_checkpoint(path, storage_options=storage_options)
            assert_same_checkpoint(loaded, previous)

    def test_readers_never_see_a_partly_replaced_checkpoint(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        if not self.atomic_overwrite:
            pytest.skip(f"{type(self).__name__}.atomic_overwrite is False")
        path = paths.join(tmp_url, "last.ckpt")
        versions = [{"version": v, "weights": torch.full((512, 1024), float(v))} for v in range(2)]
        checkpoint_io.save_checkpoint(versions[0], path, storage_options=storage_options)
        stop = threading.Event()
        seen: list[int] = []
        errors: list[str] = []

        def read() -> None:
            while not stop.is_set() and not errors:
                try:
                    loaded = checkpoint_io.load_checkpoint(path, storage_options=storage_options)
                    version = loaded["version"]
                    if not torch.equal(loaded["weights"], versions[version]["weights"]):
                        errors.append(f"read version {version} with the weights of another version")
                    seen.append(version)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for index in range(1, 13):
                checkpoint_io.save_checkpoint(versions[index % 2], path, storage_options=storage_options)
        finally:
            stop.set()
            reader.join(timeout=120)
        assert errors == [], f"a reader saw a partly written checkpoint: {errors[0]}"
        assert seen, "the reader never completed a load"
        assert checkpoint_io.load_checkpoint(path, storage_options=storage_options)["version"] == 0

    # ------------------------------------------------------------------ loading errors

    def test_loading_a_missing_path_raises_checkpoint_not_found(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "never-written.ckpt")
        with pytest.raises(CheckpointNotFoundError):
            checkpoint_io.load_checkpoint(path, storage_options=storage_options)

    @pytest.mark.parametrize("garbage", ["empty", "random", "text", "zip-magic", "truncated", "torch-pickle"])
    def test_loading_garbage_raises_corrupt_checkpoint(
        self,
        checkpoint_io: CheckpointIO,
        tmp_url: str,
        storage_options: Mapping[str, Any] | None,
        garbage: str,
    ) -> None:
        path = paths.join(tmp_url, f"{garbage}.ckpt")
        if garbage == "truncated":
            checkpoint_io.save_checkpoint(realistic_checkpoint(), path, storage_options=storage_options)
            whole = _read_bytes(path, storage_options)
            data = whole[: len(whole) // 2]
        elif garbage == "torch-pickle":
            if self.supports_pickle:
                pytest.skip("a torch.save file is this backend's own format")
            import io

            buffer = io.BytesIO()
            torch.save({"state_dict": {"w": torch.ones(3)}}, buffer)
            data = buffer.getvalue()
        else:
            rng = random.Random(garbage)
            data = {
                "empty": b"",
                "random": bytes(rng.getrandbits(8) for _ in range(4096)),
                "text": b"this is not a checkpoint\n" * 20,
                "zip-magic": b"PK\x03\x04" + bytes(rng.getrandbits(8) for _ in range(512)),
            }[garbage]
        _write_bytes(path, data, storage_options)
        with pytest.raises(CorruptCheckpointError):
            checkpoint_io.load_checkpoint(path, storage_options=storage_options)
        with pytest.raises(CorruptCheckpointError):
            checkpoint_io.load_checkpoint(path, storage_options=storage_options, weights_only=False)

    # ------------------------------------------------------------------ weights-only loading

    def test_arbitrary_objects_load_only_with_weights_only_false(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        if not self.supports_pickle:
            pytest.skip(f"{type(self).__name__}.supports_pickle is False")
        token = uuid.uuid4().hex
        path = paths.join(tmp_url, "pickled.ckpt")
        checkpoint_io.save_checkpoint({"probe": PickleProbe(token)}, path, storage_options=storage_options)
        with pytest.raises(UnsafeCheckpointError):
            checkpoint_io.load_checkpoint(path, storage_options=storage_options)
        assert token not in UNPICKLED, "loading with weights_only=True ran the pickle"
        loaded = checkpoint_io.load_checkpoint(path, storage_options=storage_options, weights_only=False)
        assert isinstance(loaded["probe"], PickleProbe) and loaded["probe"].token == token
        assert token in UNPICKLED

    def test_a_pickle_is_never_unpickled(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        if self.supports_pickle:
            pytest.skip("this backend loads pickles when asked to (weights_only=False)")
        import io

        token = uuid.uuid4().hex
        buffer = io.BytesIO()
        torch.save({"probe": PickleProbe(token)}, buffer)
        path = paths.join(tmp_url, "pickled.ckpt")
        _write_bytes(path, buffer.getvalue(), storage_options)
        for weights_only in (True, False):
            with pytest.raises(CorruptCheckpointError):
                checkpoint_io.load_checkpoint(path, storage_options=storage_options, weights_only=weights_only)
        assert token not in UNPICKLED

    # ------------------------------------------------------------------ removing

    def test_remove_deletes_an_existing_checkpoint(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "old.ckpt")
        keep = paths.join(tmp_url, "new.ckpt")
        checkpoint_io.save_checkpoint({"step": 1}, path, storage_options=storage_options)
        checkpoint_io.save_checkpoint({"step": 2}, keep, storage_options=storage_options)
        checkpoint_io.remove_checkpoint(path, storage_options=storage_options)
        assert not _exists(path, storage_options)
        with pytest.raises(CheckpointNotFoundError):
            checkpoint_io.load_checkpoint(path, storage_options=storage_options)
        assert checkpoint_io.load_checkpoint(keep, storage_options=storage_options) == {"step": 2}

    def test_removing_a_missing_checkpoint_is_not_an_error(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = paths.join(tmp_url, "missing.ckpt")
        checkpoint_io.remove_checkpoint(path, storage_options=storage_options)
        checkpoint_io.remove_checkpoint(path, storage_options=storage_options)
        assert not _exists(path, storage_options)

    # ------------------------------------------------------------------ map_location

    @pytest.mark.parametrize("map_location", ["cpu", torch.device("cpu")], ids=["str", "device"])
    def test_map_location_cpu_puts_every_tensor_on_the_cpu(
        self,
        checkpoint_io: CheckpointIO,
        tmp_url: str,
        storage_options: Mapping[str, Any] | None,
        map_location: Any,
    ) -> None:
        expected = realistic_checkpoint()
        path = paths.join(tmp_url, "mapped.ckpt")
        checkpoint_io.save_checkpoint(expected, path, storage_options=storage_options)
        loaded = checkpoint_io.load_checkpoint(path, map_location=map_location, storage_options=storage_options)
        assert_same_checkpoint(loaded, expected)
        devices = {tensor.device.type for tensor in _tensors(loaded)}
        assert devices == {"cpu"}

    # ------------------------------------------------------------------ through the runtime

    def test_checkpointer_saves_verifies_and_restores_through_this_backend(
        self,
        checkpoint_io: CheckpointIO,
        tmp_url: str,
        storage_options: Mapping[str, Any] | None,
        plugin_host: PluginHost,
    ) -> None:
        from ckpthooks._catalog import verify_checkpoint
        from ckpthooks._checkpointer import Checkpointer

        def checkpointer(model: nn.Module, optimizer: torch.optim.Optimizer) -> Checkpointer:
            return Checkpointer(
                tmp_url,
                enable_checkpointing=False,
                checkpoint_io=checkpoint_io,
                storage_options=storage_options,
                plugin_host=plugin_host,
            ).track(model=model, optimizers=optimizer)

        model, optimizer = _trained(seed=0, steps=3)
        saver = checkpointer(model, optimizer)
        saver.progress.epoch, saver.progress.global_step = 2, 30
        path = paths.join(tmp_url, "epoch=2-step=30.ckpt")
        manifest = saver.save_checkpoint(path)
        assert manifest is not None
        assert manifest.size == len(_read_bytes(path, storage_options))
        verify_checkpoint(path, None, "full", storage_options)

        fresh_model, fresh_optimizer = _trained(seed=1, steps=1)
        restorer = checkpointer(fresh_model, fresh_optimizer)
        report = restorer.restore("last", must_exist=True)
        assert report is not None
        assert report.path == paths.normalize(path)
        assert (report.epoch, report.global_step) == (2, 30)
        assert report.missing == [] and report.unexpected == []
        assert_same_checkpoint(fresh_model.state_dict(), model.state_dict(), "state_dict")
        assert_same_checkpoint(fresh_optimizer.state_dict(), optimizer.state_dict(), "optimizer")

        _train_steps(model, optimizer, 2, seed=7)
        _train_steps(fresh_model, fresh_optimizer, 2, seed=7)
        assert_same_checkpoint(fresh_model.state_dict(), model.state_dict(), "state_dict after training on")


class _Unsaveable:
    """Neither pickle nor any weights-only format can store it: a save that includes it fails."""

    def __reduce__(self) -> Any:
        raise RuntimeError("this object refuses to be saved")


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
