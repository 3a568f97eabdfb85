"""package: write dist/generator (safetensors, config, ONNX, model card, samples, hash manifest), gated on
ONNX parity with PyTorch and on the ONNX model's FID under the evaluate protocol."""

from ganforge.config import EvaluateConfig, PackageConfig, ReferenceConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import replaced_together


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--optimized", required=True, help="optimize stage output directory")
    parser.add_argument("--data", required=True, help="prepared data directory (its manifest feeds the model card)")
    parser.add_argument("--featurizer", required=True, help="featurizer weights (.safetensors)")
    parser.add_argument("--reference", required=True, help="the reference stage's statistics directory")
    parser.add_argument("--out", required=True, help="package directory to write")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = parser.parse_args()
    cfg = load_stage_config(PackageConfig, args.params)
    eval_cfg = load_stage_config(EvaluateConfig, args.params)
    reference_cfg = load_stage_config(ReferenceConfig, args.params)
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.evaluation.protocol import make_protocol
    from ganforge.packaging.build import write_package

    with replaced_together({"--out": (args.out, "dir"), "--metrics": (args.metrics, "file")},
                           {"--optimized": args.optimized, "--data": args.data, "--featurizer": args.featurizer,
                            "--reference": args.reference}):
        protocol = make_protocol(eval_cfg, reference_cfg, args.reference, args.featurizer)
        metrics = write_package(cfg, protocol, args.optimized, args.data, args.out, args.metrics)
    print(f"package: {metrics['variant']} generator, ONNX parity {metrics['onnx_max_abs_diff']:.2g} "
          f"(FID {metrics['onnx_fid']:.4f} vs {metrics['evaluated_fid']:.4f}) -> {args.out}")


if __name__ == "__main__":
    run_main(main, "package")
