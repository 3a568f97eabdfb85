"""The architectures: shapes at every resolution, their defining layers, and a save/load round trip with no pickles."""

from __future__ import annotations

import pytest
import torch

from ganforge.errors import UserError
from ganforge.models import GeneratorSpec, build_discriminator, build_generator, load_generator, save_generator
from ganforge.models.registry import load_weights


@pytest.mark.parametrize("arch", ["seed", "dcgan", "lite"])
@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(arch, resolution, channels):
    g = build_generator(GeneratorSpec(arch, 16, resolution, channels)).eval()
    images = g(torch.randn(3, 16))
    assert images.shape == (3, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    for spectral_norm in (False, True):
        d = build_discriminator(arch, resolution, channels, spectral_norm=spectral_norm)
        assert d(images).shape == (3,)


def test_lite_has_no_transposed_convs_and_uses_skip_layer_excitation():
    from ganforge.models.lite import SkipLayerExcitation

    g = build_generator(GeneratorSpec("lite", 16, 32, 3))
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert any(isinstance(m, torch.nn.Upsample) and m.mode == "nearest" for m in g.modules())
    assert sum(isinstance(m, SkipLayerExcitation) for m in g.modules()) == 1  # 4x4 gates 16x16
    params = {w: sum(p.numel() for p in build_generator(GeneratorSpec("lite", 16, 32, 3, w)).parameters())
              for w in (0.5, 1.0, 2.0)}
    assert params[0.5] < params[1.0] < params[2.0]


def test_spectral_norm_replaces_batchnorm_in_d():
    d = build_discriminator("dcgan", 32, 3, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)


@pytest.mark.parametrize("arch", ["seed", "dcgan", "lite"])
def test_d_without_batchnorm_judges_each_image_on_its_own(arch):
    d = build_discriminator(arch, 32, 3, batchnorm=False).train()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # in training mode too, an image's logit does not depend on the rest of its batch
        assert torch.allclose(d(x)[:2], d(x[:2]), atol=1e-5)


def test_width_is_checked():
    with pytest.raises(UserError, match="seed architecture keeps the article's widths"):
        GeneratorSpec.from_dict({"arch": "seed", "z_dim": 8, "resolution": 16, "channels": 1, "width": 2.0})
    old = GeneratorSpec.from_dict({"arch": "seed", "z_dim": 8, "resolution": 16, "channels": 1})
    assert old.width == 1.0  # specs written before the width multiplier


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


def test_pickle_posing_as_safetensors_is_refused(tmp_path, reliability):
    reliability.bad_input()
    path = tmp_path / "g.safetensors"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_weights(path)
