"""The seed architecture: shapes at every resolution, and a save/load round trip with no pickles."""

from __future__ import annotations

import pytest
import torch

from ganforge.errors import UserError
from ganforge.models import GeneratorSpec, build_discriminator, build_generator, load_generator, save_generator
from ganforge.models.registry import load_weights


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_seed_shapes(resolution, channels):
    g = build_generator(GeneratorSpec("seed", 16, resolution, channels)).eval()
    d = build_discriminator("seed", resolution, channels)
    images = g(torch.randn(3, 16))
    assert images.shape == (3, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images).shape == (3,)


def test_seed_generator_keeps_the_article_design():
    g = build_generator(GeneratorSpec("seed", 100, 32, 1))
    widths = [m.out_features for m in g.fc if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 512, 1024]
    convs = [m for m in g.ups if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert len(convs) == 3 and all(isinstance(m, torch.nn.ConvTranspose2d) for m in convs)  # 4 -> 8 -> 16 -> 32


def test_save_load_round_trip_is_exact(tmp_path):
    spec = GeneratorSpec("seed", 8, 16, 1)
    torch.manual_seed(0)
    g = build_generator(spec).eval()
    save_generator(g, spec, tmp_path / "g.safetensors")
    loaded, loaded_spec = load_generator(tmp_path / "g.safetensors")
    z = torch.randn(4, 8)
    assert loaded_spec == spec
    assert torch.equal(g(z), loaded(z))


def test_pickle_posing_as_safetensors_is_refused(tmp_path):
    path = tmp_path / "g.safetensors"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_weights(path)
