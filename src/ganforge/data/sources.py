"""Image sources. Each returns :class:`RawImages`: uint8 images (N, C, H, H), labels and provenance."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganforge.errors import UserError


@dataclass(frozen=True)
class RawImages:
    """Images as loaded from a source, before channel conversion, resizing and splitting.

    Args:
        images: uint8 array (N, C, H, H) with C in {1, 3}.
        labels: int64 array (N,), indices into ``class_names``.
        class_names: one name per class (``("all",)`` for unlabeled data).
        source_hash: sha256 over the source's content, so a changed source is visible in the manifest.
        split: optional int64 array (N,): 0 train, 1 test, when the source defines its own split.
        skipped: files left out, each ``{"path": ..., "reason": ...}``.
        total_files: files looked at (file sources), or N.
        paths: source path of each image, when the source has files.
        deduplicated: exact duplicates were already dropped (file sources compare file bytes).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source_hash: str
    split: np.ndarray | None = None
    skipped: tuple[dict[str, str], ...] = ()
    total_files: int = 0
    paths: tuple[str, ...] = ()
    deduplicated: bool = False


def hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def load_digits_source() -> RawImages:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images, pixel values 0..16. Offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8) in [0, 16]
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    names = tuple(str(n) for n in bunch.target_names)
    return RawImages(images, labels, names, hash_arrays(images, labels), total_files=len(images))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: CIFAR's batches are pickles, and a pickle can
    otherwise run arbitrary code. (torchvision's own CIFAR10 class uses an unrestricted pickle.load.)"""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"


def load_cifar10(path: Path, download: bool) -> RawImages:
    """CIFAR-10 from the official python-version archive at ``path`` (the file, or a folder holding it).

    With ``download`` set and the archive missing, torchvision's download code fetches it into that folder
    (checking its md5); it is then read here, through the restricted unpickler.
    """
    if path.is_dir() or not path.name.endswith((".tar.gz", ".tgz")):
        path = path / CIFAR10_ARCHIVE
    if not path.is_file():
        if not download:
            raise UserError(f"{path}: CIFAR-10 archive not found; set prepare.path to {CIFAR10_ARCHIVE} "
                            "or prepare.download: true")
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_url

        try:
            download_url(CIFAR10.url, str(path.parent), filename=path.name, md5=CIFAR10.tgz_md5)
        except Exception as e:  # no network: URLError, OSError or RuntimeError
            raise UserError(f"CIFAR-10 download failed ({type(e).__name__}: {e}); set prepare.path to a local "
                            f"{CIFAR10_ARCHIVE}") from None
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and (name.startswith(("data_batch_", "test_batch")) or name == "batches.meta"):
                    batches[name] = _ArrayUnpickler(io.BytesIO(tar.extractfile(member).read()),
                                                    encoding="bytes").load()
    except Exception as e:  # tar errors, refused globals, malformed pickles
        raise UserError(f"{path}: not a CIFAR-10 python archive ({type(e).__name__}: {e})") from None
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if not train_names or "test_batch" not in batches:
        raise UserError(f"{path}: not a CIFAR-10 python archive (data_batch_* or test_batch missing)")
    parts = [batches[n] for n in train_names] + [batches["test_batch"]]
    for name, batch in zip([*train_names, "test_batch"], parts, strict=True):
        ok = isinstance(batch, dict) and isinstance(batch.get(b"data"), np.ndarray) and b"labels" in batch
        if not ok or batch[b"data"].shape != (len(batch[b"labels"]), 3072):
            raise UserError(f"{path}: {name} is not a CIFAR-10 batch (expected data N x 3072 and N labels)")
    images = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in parts])
    labels = np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in parts])
    split = np.concatenate([np.full(len(b[b"labels"]), int(i == len(parts) - 1)) for i, b in enumerate(parts)])
    meta = batches.get("batches.meta")
    meta = meta if isinstance(meta, dict) else {}
    names = tuple(n.decode() for n in meta.get(b"label_names", [])) or tuple(str(i) for i in range(10))
    return RawImages(images, labels, names, hash_arrays(images, labels), split=split, total_files=len(images))


def load_mnist_family(name: str, root: Path, download: bool) -> RawImages:
    """MNIST or Fashion-MNIST through torchvision's classes, from IDX files under ``root`` (torchvision's
    layout, ``<root>/MNIST/raw/``), downloaded there by torchvision when ``download`` is set."""
    from torchvision.datasets import MNIST, FashionMNIST

    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[name]
    parts = []
    for train in (True, False):
        try:
            parts.append(cls(root=str(root), train=train, download=download))
        except RuntimeError as e:
            raise UserError(f"{root}: {name} not found under {root}/{cls.__name__}/raw ({e}); "
                            "set prepare.path or prepare.download: true") from None
        except Exception as e:  # a failed download or an unreadable IDX file
            raise UserError(f"{root}: {name} could not be read ({type(e).__name__}: {e})") from None
    images = np.concatenate([p.data.numpy() for p in parts])[:, None]  # (N, 1, 28, 28)
    labels = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
    split = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return RawImages(images, labels, tuple(parts[0].classes), hash_arrays(images, labels), split=split,
                     total_files=len(images))
