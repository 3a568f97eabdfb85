"""package: write dist/generator (safetensors, config, ONNX, samples, hash manifest) and check ONNX parity."""

import argparse

from ganforge.config import PackageConfig, load_stage_config
from ganforge.entry import run_main
from ganforge.packaging.package import write_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--optimized", required=True, help="optimize stage output directory")
    parser.add_argument("--out", required=True, help="package directory to write")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = parser.parse_args()
    cfg = load_stage_config(PackageConfig, args.params)
    metrics = write_package(cfg, args.optimized, args.out, args.metrics)
    print(f"package: {metrics['variant']} generator, ONNX parity {metrics['onnx_max_abs_diff']:.2g} -> {args.out}")


if __name__ == "__main__":
    run_main(main, "package")
