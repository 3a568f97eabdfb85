"""featurizer: train the small domain CNN whose features the FID/KID/PR metrics use (works offline)."""

from ganforge.config import FeaturizerConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import replaced_together


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="prepared-data directory")
    parser.add_argument("--out", required=True, help="featurizer weights (.safetensors)")
    parser.add_argument("--metrics", required=True, help="metrics JSON (classifier accuracy)")
    args = parser.parse_args()
    cfg = load_stage_config(FeaturizerConfig, args.params)
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.evaluation.features import train_featurizer
    with replaced_together({"--out": (args.out, "file"), "--metrics": (args.metrics, "file")},
                           {"--data": args.data}):
        metrics = train_featurizer(cfg, data_dir=args.data, out_path=args.out, metrics_path=args.metrics)
    print(f"featurizer: test accuracy {metrics['test_accuracy']:.3f} -> {args.out}")


if __name__ == "__main__":
    run_main(main, "featurizer")
