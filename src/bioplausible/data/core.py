"""In-memory dataset containers and the shared post-processing of raw arrays.

Every loader in :mod:`bioplausible.data.formats` returns :class:`RawData`: uint8 images laid
out ``(N, C, H, W)`` plus labels. :func:`assemble` turns that into a :class:`DataBundle` of
tensors, always in the same order, so that every dataset behaves alike:

1. validation split: the dataset's own (MedMNIST) or the *last* ``val_size`` training
   examples (deterministic; the first ``N - val_size`` remain for training);
2. ``subset=N``: keep the first ``N`` training examples; the validation and test splits stay
   whole (evaluation on a fixed prefix of the test set would measure a different, and for
   MNIST harder, test set);
3. normalisation: ``"standardize"`` subtracts the per-channel mean and divides by the
   per-channel standard deviation, both computed exactly (from a 256-bin histogram) on the
   final training split only; ``"unit"`` divides by 255; ``"none"`` keeps 0..255 as float;
4. ``flatten`` reshapes ``(N, C, H, W)`` to ``(N, C*H*W)``;
5. ``one_hot`` turns class indices into float ``(N, K)`` targets (multi-label targets are
   already float ``(N, K)``);
6. ``device``/``dtype`` apply to the inputs and to float targets.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError

NORMALIZATIONS = ("standardize", "unit", "none", "per_image")


def per_image_standardize(t: torch.Tensor) -> torch.Tensor:
    """Each example to zero mean and unit variance over all its values (in place where possible).

    As TensorFlow's ``tf.image.per_image_standardization`` (used by the node-perturbation authors'
    CIFAR code): ``(x − mean) / max(std, 1/√n)``, std the population std over the n values.
    """
    flat = t.reshape(t.shape[0], -1)
    n = flat.shape[1]
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, unbiased=False, keepdim=True).clamp_min(1.0 / n ** 0.5)
    return ((flat - mean) / std).reshape(t.shape)


@dataclass
class Split:
    """One split held in memory: inputs ``x`` and targets ``y`` with the same first dimension.

    ``x`` is a float tensor ``(N, C, H, W)`` (or ``(N, D)`` when flattened); ``y`` holds int64
    class indices ``(N,)`` or float multi-label / one-hot targets ``(N, K)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:  # shapes, not every number
        return (f"Split({len(self)} examples, x {tuple(self.x.shape[1:])} {str(self.x.dtype).replace('torch.', '')}, "
                f"y {tuple(self.y.shape[1:]) or 'class index'} {str(self.y.dtype).replace('torch.', '')})")

    def to(self, device=None, dtype: torch.dtype | None = None) -> Split:
        """Move to ``device``; ``dtype`` applies to ``x`` and to floating-point ``y``."""
        x = self.x.to(device=device, dtype=dtype)
        y_dtype = dtype if (dtype is not None and self.y.is_floating_point()) else None
        y = self.y.to(device=device, dtype=y_dtype)
        return Split(x, y)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches.

        Without shuffling the batches are views (slices) of the stored tensors. With
        shuffling, one permutation is drawn per call on the CPU (from ``generator`` if given,
        so runs are reproducible on any device) and each batch is gathered with ``x[idx]``;
        the dataset is never copied as a whole.
        """
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        n, bs = len(self), int(batch_size)
        stop = (n // bs) * bs if drop_last else n
        if not shuffle:
            for i in range(0, stop, bs):
                yield self.x[i : i + bs], self.y[i : i + bs]
            return
        perm = torch.randperm(n, generator=generator)
        if self.x.device.type != "cpu":
            perm = perm.to(self.x.device)
        x, y = self.x, self.y
        for i in range(0, stop, bs):
            idx = perm[i : i + bs]
            yield x.index_select(0, idx), y.index_select(0, idx)


@dataclass
class DatasetInfo:
    """Static facts about a loaded dataset.

    ``input_shape`` excludes the batch dimension; ``task`` is ``"multiclass"`` or
    ``"multilabel"``. ``mean``/``std`` are the per-channel statistics (0..255 scale) that
    ``normalize="standardize"`` used, else ``None``.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    task: str
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass
class DataBundle:
    """Train, test and optional validation splits with their :class:`DatasetInfo`."""

    train: Split
    test: Split
    val: Split | None
    info: DatasetInfo

    def __repr__(self) -> str:  # one line: sizes and shapes, not every tensor
        sizes = ", ".join(f"{name} {len(split)}" for name, split in
                          (("train", self.train), ("val", self.val), ("test", self.test)) if split is not None)
        return (f"DataBundle({self.info.name!r}: {sizes}; input {tuple(self.info.input_shape)}, "
                f"{self.info.num_classes} classes, {self.info.task})")


@dataclass
class RawData:
    """What a format loader returns: uint8 images ``(N, C, H, W)`` and labels per split.

    Labels are integer class indices ``(N,)`` for ``task="multiclass"`` or 0/1 arrays
    ``(N, K)`` for ``task="multilabel"``. ``val`` is set only for datasets that ship their
    own validation split.
    """

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    val: tuple[np.ndarray, np.ndarray] | None = None
    task: str = "multiclass"
    class_names: list[str] | None = field(default=None)


def resolve_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """The data root: ``root`` if given, else ``$BIOPLAUSIBLE_DATA``, else the user cache.

    The cache is ``$XDG_CACHE_HOME/bioplausible`` when ``XDG_CACHE_HOME`` is set, otherwise
    ``~/.cache/bioplausible``. The folder is not created here. A root that exists but is a file
    or an unreadable folder is a :class:`ConfigError` naming where it came from.
    """
    if root is not None and str(root) != "":
        return _check_root(pathlib.Path(root).expanduser(), "the data root (root=/--data-root)")
    env = os.environ.get("BIOPLAUSIBLE_DATA", "")
    if env:
        return _check_root(pathlib.Path(env).expanduser(), "BIOPLAUSIBLE_DATA")
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(cache).expanduser() if cache else pathlib.Path.home() / ".cache"
    return _check_root(base / "bioplausible", "the data cache")


def _check_root(path: pathlib.Path, source: str) -> pathlib.Path:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{source} {str(path)!r} is a file, not a folder; point it at the folder "
                          f"that holds the datasets")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"{source} {str(path)!r} cannot be read (permissions); fix them or choose "
                          f"another data root")
    return path


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and (population) std of uint8 images ``(N, C, H, W)``."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        channel = torch.from_numpy(x[:, c].copy()).reshape(-1)  # copy: x may be read-only
        hist = torch.bincount(channel, minlength=256).numpy().astype(np.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(mean)
        stds.append(np.sqrt(var))
    return np.array(means), np.array(stds)


def _subset(pair: tuple[np.ndarray, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    return pair[0][:n], pair[1][:n]


def _to_inputs(x: np.ndarray, normalize: str, mean, std, dtype, flatten: bool) -> torch.Tensor:
    wide = dtype == torch.float64
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64 if wide else np.float32))
    if normalize == "unit":
        t.div_(255.0)
    elif normalize == "standardize":
        m = torch.tensor(mean, dtype=t.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=t.dtype).clamp_min(1e-8).view(1, -1, 1, 1)
        t.sub_(m).div_(s)
    elif normalize == "per_image":
        t = per_image_standardize(t)
    if flatten:
        t = t.reshape(t.shape[0], -1)
    return t if dtype is None or dtype == t.dtype else t.to(dtype)


def _to_targets(y: np.ndarray, task: str, num_classes: int, one_hot: bool, dtype) -> torch.Tensor:
    fdtype = dtype if dtype is not None else torch.float32
    if task == "multilabel":
        return torch.from_numpy(np.array(y, dtype=np.float32)).to(fdtype)
    t = torch.from_numpy(np.array(y, dtype=np.int64))
    if one_hot:
        return torch.nn.functional.one_hot(t, num_classes).to(fdtype)
    return t


def as_dtype(dtype) -> torch.dtype | None:
    """``torch.float64`` or its name ``"float64"`` -> ``torch.float64``; floating types only."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    return dtype


def check_args(*, normalize: str, val_size: int, dtype, subset: int | None) -> None:
    """Validate the dataset-independent arguments of ``load_dataset`` (ConfigError)."""
    as_dtype(dtype)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
        )
    if not isinstance(val_size, (int, np.integer)) or val_size < 0:
        raise ConfigError(f"val_size must be an integer >= 0, got {val_size!r}")
    if subset is not None and (not isinstance(subset, (int, np.integer)) or subset < 1):
        raise ConfigError(f"subset must be a positive integer or None, got {subset!r}")


def assemble(
    name: str,
    raw: RawData,
    *,
    normalize: str = "standardize",
    flatten: bool = False,
    val_size: int = 0,
    one_hot: bool = False,
    device=None,
    dtype: torch.dtype | None = torch.float32,
    subset: int | None = None,
) -> DataBundle:
    """Apply the steps listed in the module docstring to ``raw`` and return a bundle."""
    check_args(normalize=normalize, val_size=val_size, dtype=dtype, subset=subset)
    dtype = as_dtype(dtype)
    train, test, val = raw.train, raw.test, raw.val
    val_size = int(val_size or 0)
    if val_size and val is not None:
        raise ConfigError(
            f"{name} ships its own validation split; leave val_size at 0 (bundle.val is set)"
        )
    if val_size:
        n = len(train[0])
        if val_size >= n:
            raise ConfigError(
                f"val_size={val_size} leaves no training data ({name} has {n} training examples)"
            )
        val = (train[0][n - val_size :], train[1][n - val_size :])
        train = (train[0][: n - val_size], train[1][: n - val_size])
    if subset is not None:  # training data only: validation and test stay whole
        train = _subset(train, int(subset))
    mean = std = None
    if normalize == "standardize":
        mean, std = channel_stats(train[0])

    def split(pair: tuple[np.ndarray, np.ndarray]) -> Split:
        x = _to_inputs(pair[0], normalize, mean, std, dtype, flatten)
        y = _to_targets(pair[1], raw.task, raw.num_classes, one_hot, dtype)
        s = Split(x, y)
        return s.to(device=device) if device is not None else s

    shape = tuple(int(d) for d in train[0].shape[1:])
    info = DatasetInfo(
        name=name,
        input_shape=(int(np.prod(shape)),) if flatten else shape,
        num_classes=int(raw.num_classes),
        task=raw.task,
        class_names=list(raw.class_names) if raw.class_names is not None else None,
        mean=tuple(float(m) for m in mean) if mean is not None else None,
        std=tuple(float(s) for s in std) if std is not None else None,
    )
    return DataBundle(
        train=split(train),
        test=split(test),
        val=split(val) if val is not None else None,
        info=info,
    )
