"""Checkpoints are untrusted input: loading one must not run code chosen by whoever wrote it.

A `.pt` file is a pickle, and unpickling calls whatever functions the pickle names (its globals): a
checkpoint from a colleague, a public release or a tampered copy (with its manifest rewritten to
match) could name `posix.system`. So:

- graine's own reads of checkpoint files (RNG states, dumps, the ZeRO-0 export) use
  `torch.load(weights_only=True)`, with only the globals below allowed on top of torch's tensor
  types (`load`);
- before DeepSpeed reads a checkpoint with `torch.load(weights_only=False)` (resume, the universal
  conversion `ds_to_universal`, `zero_to_fp32` for the export), every pickle in the folder is checked
  (`check_folder`, `require_safe`): its globals, resolved by Python's own unpickler exactly as the real
  load resolves them but never imported nor called (each one becomes an inert stand-in), must all be
  in the allow-list. Only the small `data.pkl` of each zip file is read, not the tensors. A file that
  is not in torch's zip format, a TorchScript archive, and a pickle the check cannot follow are
  refused too.

A file or folder the user trusts explicitly is neither checked nor restricted:
`graine run|task|checkpoint ... --trust-checkpoint PATH` (repeatable), or `GRAINE_TRUST_CHECKPOINT`
(paths separated by `:`), which that option sets and which the training processes inherit. PATH is a
checkpoint folder (`.../checkpoints/global_step<N>`, or its `_universal` conversion) or one file;
trusting a folder trusts every file under it.

The allow-list was measured: checkpoints of ZeRO 0, 1, 2 and 3 in fp32 and bf16 (2 ranks) and their
universal conversions, each file loaded with weights_only=True (DEEPSPEED_GLOBALS), plus the RNG
files graine wrote before they were saved without numpy objects (LEGACY_RNG_GLOBALS).
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import logging
import os
import pickle
import pickletools
import warnings
from pathlib import Path

from core.errors import CheckpointError

log = logging.getLogger("graine.checkpoints")

TRUST_ENV = "GRAINE_TRUST_CHECKPOINT"
TRUST_OPTION = "--trust-checkpoint"

# DeepSpeed's own objects in its checkpoint files, beside tensors, dtypes and containers (full names;
# all are plain data: building them runs no code of the file's choosing).
DEEPSPEED_GLOBALS = (
    # `loss_scaler` of the ZeRO 1-3 optimizer states (*_optim_states.pt, and `zero/optimizer_state.pt`
    # of a universal conversion): a static scaler in fp32/bf16 ...
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    # ... and the dynamic one of fp16 training (same module, same kind of object; fp16 needs a GPU, so
    # this entry comes from DeepSpeed's source rather than a CPU run).
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    # `zero_stage` of the same optimizer states, an IntEnum.
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    # `param_slice_mappings` of the ZeRO 1/2 optimizer states (fp32 and bf16): a dataclass (numel, start).
    "deepspeed.utils.tensor_fragment.fragment_address",
)
# The RNG files graine wrote before they were made of tensors, lists and numbers: numpy's state held
# an ndarray. Allowed in `rng/*.pt` only, which graine alone reads (weights_only=True).
LEGACY_RNG_GLOBALS = (
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",  # the same function, pickled under numpy < 2
    "numpy.ndarray",
    "numpy.dtype",
)
# Files that are pickles whatever their first bytes say; others are checked when they look like one.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
NOT_PICKLES = (".safetensors", ".json", ".yaml", ".yml", ".txt", ".md")
ZIP_MAGIC = b"PK\x03\x04"
# torch.load's own renaming before it imports (serialization._load's UnpicklerWrapper).
TORCH_MODULE_MAPPING = {"torch.tensor": "torch._tensor"}


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file whose unpickling could run code: refused, nothing loaded."""


# ------------------------------------------------------------------------------------------- trust
def trusted_paths() -> list[Path]:
    return [Path(p).resolve() for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p.strip()]


def trust(paths) -> None:
    """Trust these files or folders in this process and the processes it starts (what the CLI option does)."""
    known = os.environ.get(TRUST_ENV, "").split(os.pathsep)
    added = [str(Path(os.path.expanduser(p)).resolve()) for p in paths]
    os.environ[TRUST_ENV] = os.pathsep.join(dict.fromkeys(p for p in known + added if p))
    for p in added:
        log.warning("trusting %s: its pickles are loaded as they are, and can run any code (%s)", p, TRUST_OPTION)


def is_trusted(path: Path) -> bool:
    path = Path(path).resolve()
    return any(path == t or t in path.parents for t in trusted_paths())


def checkpoint_folder_of(path: Path) -> Path:
    """The checkpoint folder (the one with a manifest) holding `path`, to name in the advice; else `path`."""
    path = Path(path)
    for parent in path.parents:
        if (parent / "manifest.json").is_file():
            return parent
    return path


# ------------------------------------------------------------------------------------- allow-list
def _pairs(names) -> frozenset[tuple[str, str]]:
    return frozenset(tuple(n.rsplit(".", 1)) for n in names)


_TORCH_PAIRS: frozenset | None = None


def allowed_pairs(legacy_rng: bool = False) -> frozenset[tuple[str, str]]:
    """(module, name) of every global a checkpoint file may use: torch's weights_only set plus ours."""
    global _TORCH_PAIRS
    if _TORCH_PAIRS is None:
        from torch._weights_only_unpickler import _get_allowed_globals

        _TORCH_PAIRS = _pairs(_get_allowed_globals())
    extra = DEEPSPEED_GLOBALS + (LEGACY_RNG_GLOBALS if legacy_rng else ())
    return _TORCH_PAIRS | _pairs(extra)


def _resolve(name: str):
    module, attr = name.rsplit(".", 1)
    with warnings.catch_warnings():  # numpy.core: numpy 2's deprecated alias of numpy._core
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), attr)


def safe_globals(legacy_rng: bool = False) -> list:
    """The allow-list for `torch.serialization.safe_globals` ((object, full name) pairs)."""
    out = []
    for name in DEEPSPEED_GLOBALS + (LEGACY_RNG_GLOBALS if legacy_rng else ()):
        try:
            out.append((_resolve(name), name))
        except (ImportError, AttributeError):
            continue  # not installed (or not under this name in this version): nothing to allow
    if legacy_rng:
        import numpy as np

        # weights_only re-checks the type of the object an ndarray's dtype becomes (UInt32DType, ...)
        out += [(type(np.dtype(t)), f"{type(np.dtype(t)).__module__}.{type(np.dtype(t)).__name__}")
                for t in (np.uint32,)]
    return out


def _is_legacy_rng(path: Path) -> bool:
    return Path(path).parent.name == "rng"


# ---------------------------------------------------------------------------------- pickle check
class _Inert:
    """What every global becomes during the check: built, filled and given state without effect."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):  # OrderedDict and Counter are rebuilt with SETITEMS
        pass


class _GlobalsRecorder(pickle.Unpickler):
    """Python's unpickler (the one torch.load uses) with every global recorded and replaced by an inert
    class, and tensor storages by an inert object: it follows the pickle exactly as the real load
    does, so the globals it records are the ones the real load would import and call."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="utf-8")  # torch.load's default encoding
        self.seen: set[tuple[str, str]] = set()

    def find_class(self, module, name):
        # The renamings the real load applies before importing (pickle's Python 2 names, torch's own).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        module = TORCH_MODULE_MAPPING.get(module, module)
        self.seen.add((str(module), str(name)))
        return type(f"inert {module}.{name}", (_Inert,), {})

    def persistent_load(self, pid):
        return _Inert()


class _Refused(Exception):
    pass


def _data_pickle(path: Path) -> bytes:
    """The pickle torch.load would unpickle from `path`, read with torch's own zip reader."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        raise _Refused("is not in torch's zip format (torch.save since torch 1.6, which DeepSpeed and graine "
                       "write): torch would read it with its legacy loader, which this check does not follow")
    import torch

    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = reader.get_all_records()
        if "constants.pkl" in records or any(r == "code" or r.startswith("code/") for r in records):
            raise _Refused("is a TorchScript archive, which torch.load would run through torch.jit.load")
        return reader.get_record("data.pkl")
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 (a damaged or foreign zip: say so)
        raise _Refused(f"is not a readable torch file ({type(exc).__name__}: {exc})") from None


def pickle_globals(path: Path) -> set[tuple[str, str]]:
    """The globals (module, name) the pickle of the torch file `path` would import; refuses (raises
    _Refused) what it cannot follow. Nothing of the file is imported or called."""
    data = _data_pickle(path)
    try:
        for opcode, _, _ in pickletools.genops(data):
            # EXT codes name globals through copyreg's extension registry, which graine's files never use.
            if opcode.name in ("EXT1", "EXT2", "EXT4"):
                raise _Refused(f"uses the pickle opcode {opcode.name} (a global by extension code)")
        recorder = _GlobalsRecorder(data)
        recorder.load()
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 (what torch would do with it is unknown: refuse)
        raise _Refused(f"holds a pickle the safety check cannot follow ({type(exc).__name__}: {exc})") from None
    return recorder.seen


def check_file(path: Path) -> str | None:
    """Why the torch file `path` must not be unpickled (naming the offending globals), or None."""
    path = Path(path)
    try:
        seen = pickle_globals(path)
    except _Refused as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot be read ({exc})"
    allowed = allowed_pairs(legacy_rng=_is_legacy_rng(path))
    # A dotted name (module "torch", name "_utils.x") is walked attribute by attribute: never allowed.
    bad = sorted(f"{m}.{n}" if "." not in n else f"{m}.{n} (name {n!r} in module {m!r})" for m, n in seen - allowed)
    if not bad:
        return None
    return (f"would import {', '.join(bad)} when unpickled: not on graine's allow-list of checkpoint globals (torch's "
            "tensor types and a few DeepSpeed classes, checkpoints/safe_load.py), so loading it could run code "
            "chosen by whoever wrote it")


def looks_like_pickle(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return True
    if name.endswith(NOT_PICKLES):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError:
        return True  # unreadable: check_file says why
    return head == ZIP_MAGIC or head[:1] == b"\x80"  # a zip (torch.save) or a pickle's PROTO opcode


def pickle_files(folder: Path) -> list[Path]:
    """Every file under `folder` (symbolic links followed, once) that torch could unpickle, sorted."""
    folder = Path(folder)
    out, seen_dirs = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        out += [Path(root) / f for f in files if looks_like_pickle(Path(root) / f)]
    return sorted(out)


def folder_problems(folder: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """This rank's share of the pickles under `folder` that must not be loaded, each as "<file> <why>"
    (naming its offending globals). Trusted files are not checked."""
    problems = []
    try:
        for path in pickle_files(folder)[rank::world_size]:
            if not is_trusted(path):
                why = check_file(path)
                if why:
                    problems.append(f"{path} {why}")
    except Exception as exc:  # noqa: BLE001 (reported like a refusal, so that every rank agrees)
        problems.append(f"{folder} cannot be checked ({type(exc).__name__}: {exc})")
    return problems


def refusal_of(folder: Path, problems: list[str]) -> str:
    return (f"{'; '.join(problems)}. Nothing was loaded: a checkpoint is untrusted input (it may come from a "
            f"colleague, a public release or a tampered copy, its manifest rewritten to match). Pass "
            f"{TRUST_OPTION} {folder} (or set {TRUST_ENV}={folder}) to load it anyway if you trust its author (trust "
            "is per path: only the folders and files named are loaded unchecked)")


def check_folder(folder: Path, rank: int = 0, world_size: int = 1) -> str | None:
    """Why this rank's share of the pickles under `folder` must not be loaded (every offending file with
    its globals, and how to trust them), or None."""
    problems = folder_problems(folder, rank, world_size)
    return refusal_of(folder, problems) if problems else None


def require_safe(*folders: Path) -> None:
    """Raise UnsafeCheckpointError unless every pickle under `folders` may be loaded (one process)."""
    for folder in folders:
        why = check_folder(folder)
        if why:
            raise UnsafeCheckpointError(why)


# ------------------------------------------------------------------------------------------- load
def load(path: Path, mmap: bool = False, meta: bool = False):
    """`torch.load` of one checkpoint file on the CPU with weights_only=True and the allow-list above
    (numpy's for RNG files), or as it is if the user trusts it. A refusal names the file and global.
    `meta`: tensors on the meta device, nothing of their data read (only the pickle)."""
    import torch

    path = Path(path)
    location = "meta" if meta else "cpu"
    if is_trusted(path):
        return torch.load(path, map_location=location, weights_only=False, mmap=mmap)
    legacy_rng = _is_legacy_rng(path)
    with torch.serialization.safe_globals(safe_globals(legacy_rng)):
        try:
            return torch.load(path, map_location=location, weights_only=True, mmap=mmap)
        except OSError:
            raise
        except Exception as exc:
            # weights_only refuses with UnpicklingError (or RuntimeError for TorchScript); a crafted pickle
            # can also fail inside an allowed function: say which global is at fault when there is one.
            why = check_file(path)
            if why is None and not isinstance(exc, pickle.UnpicklingError):
                raise
            why = why or f"cannot be loaded with weights_only=True ({str(exc).splitlines()[0]})"
            raise UnsafeCheckpointError(refusal_of(checkpoint_folder_of(path), [f"{path} {why}"])) from None
