"""reference: extract the real images' features once and cache their statistics for every later scoring."""

from ganforge.config import ReferenceConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import replaced_together


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="prepared-data directory")
    parser.add_argument("--featurizer", required=True, help="featurizer weights (domain extractor)")
    parser.add_argument("--out", required=True, help="directory of cached statistics to write")
    parser.add_argument("--metrics", required=True, help="metrics JSON (real-image IS, extraction speed)")
    args = parser.parse_args()
    cfg = load_stage_config(ReferenceConfig, args.params)
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.evaluation.reference import compute_reference
    with replaced_together({"--out": (args.out, "dir"), "--metrics": (args.metrics, "file")},
                           {"--data": args.data, "--featurizer": args.featurizer}):
        metrics = compute_reference(cfg, args.data, args.featurizer, args.out, args.metrics)
    split = metrics[cfg.split]
    print(f"reference: {cfg.feature_extractor} statistics of {split['count']} {cfg.split} images "
          f"({split['extract_img_per_s']:.0f} img/s), real-image IS {split['isc_mean']:.3f} -> {args.out}")


if __name__ == "__main__":
    run_main(main, "reference")
