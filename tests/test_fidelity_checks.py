"""Honest checks of the metric pipeline: an independent FID, identical sets, monotone degradation, and a
trained generator against an untrained one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity

from ganforge.data.prepared import load_split
from ganforge.evaluation.features import load_featurizer
from ganforge.evaluation.fidelity import DOMAIN_EXTRACTOR
from ganforge.evaluation.protocol import score_generator


class _UInt8Images(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) as a torch-fidelity input."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _metrics(featurizer, a, b, **kwargs) -> dict:
    return torch_fidelity.calculate_metrics(
        input1=a, input2=b, feature_extractor=DOMAIN_EXTRACTOR, feature_extractor_weights_path=str(featurizer),
        cuda=False, verbose=False, cache=False, save_cpu_ram=True, **kwargs)


def _fid_numpy(f1: np.ndarray, f2: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets, written out with numpy/scipy."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make the covariances singular; the root still exists
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.fixture(scope="module")
def splits(tiny_run):
    train = torch.from_numpy(np.array(load_split(tiny_run.prepared, "train").images))
    test = torch.from_numpy(np.array(load_split(tiny_run.prepared, "test").images))
    return train, test


def test_fid_matches_an_independent_numpy_reference(tiny_run, splits):
    train, test = splits
    net = load_featurizer(tiny_run.featurizer)
    with torch.no_grad():
        f_train, f_test = (net(x)[0].double().numpy() for x in (train, test))
    ours = _metrics(tiny_run.featurizer, _UInt8Images(test), _UInt8Images(train), fid=True)
    reference = _fid_numpy(f_test, f_train)
    assert ours["frechet_inception_distance"] == pytest.approx(reference, rel=1e-4)


def test_a_set_against_itself_scores_about_zero(tiny_run, splits):
    train, _ = splits
    same = _metrics(tiny_run.featurizer, _UInt8Images(train), _UInt8Images(train), fid=True, kid=True,
                    kid_subset_size=200, kid_subsets=10)
    assert abs(same["frechet_inception_distance"]) < 1e-3
    # KID draws its subsets of each input independently, so even identical sets give a small unbiased
    # estimate around zero: it must sit within three standard deviations of the subset estimates.
    assert abs(same["kernel_inception_distance_mean"]) <= 3 * same["kernel_inception_distance_std"]


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_fid_grows_monotonically_with_degradation(tiny_run, splits, kind):
    import torchvision.transforms.functional as TF

    train, test = splits
    generator = torch.Generator().manual_seed(0)

    def degrade(level: float) -> torch.Tensor:
        x = test.float()
        if kind == "noise":
            x = x + torch.randn(x.shape, generator=generator) * 255 * level
        else:
            x = TF.gaussian_blur(x, kernel_size=7, sigma=level * 10)
        return x.clamp(0, 255).round().to(torch.uint8)

    levels = [0.05, 0.1, 0.2, 0.4]
    fids = [_metrics(tiny_run.featurizer, _UInt8Images(degrade(level)), _UInt8Images(train),
                     fid=True)["frechet_inception_distance"] for level in levels]
    clean = _metrics(tiny_run.featurizer, _UInt8Images(test), _UInt8Images(train), fid=True)
    assert clean["frechet_inception_distance"] < fids[0]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_a_trained_generator_scores_far_better_than_an_untrained_one(tiny_run, tiny_protocol):
    from ganforge.models import build_generator, load_generator
    from ganforge.models.registry import trained_generator_path

    trained, spec = load_generator(trained_generator_path(tiny_run.train_dir, "best"))
    torch.manual_seed(0)
    untrained = build_generator(spec).eval()
    trained_fid = score_generator(trained, spec.z_dim, tiny_protocol)["fid"]
    assert trained_fid * 2 < score_generator(untrained, spec.z_dim, tiny_protocol)["fid"]
