"""evaluate: FID, KID, IS and precision/recall of the trained generator through torch-fidelity."""

from ganforge.config import EvaluateConfig, ReferenceConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import replaced_together


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train-dir", required=True, help="the train stage's output directory")
    parser.add_argument("--data", required=True, help="prepared-data directory")
    parser.add_argument("--featurizer", required=True, help="featurizer weights (.safetensors)")
    parser.add_argument("--reference", required=True, help="the reference stage's statistics directory")
    parser.add_argument("--metrics", required=True, help="quality metrics JSON to write")
    parser.add_argument("--speed", required=True, help="speed metrics JSON to write (images/s, batch-1 latency)")
    parser.add_argument("--grid", required=True, help="sample-grid PNG to write")
    parser.add_argument("--nearest", required=True, help="nearest-neighbour grid PNG to write")
    args = parser.parse_args()
    cfg = load_stage_config(EvaluateConfig, args.params)
    reference_cfg = load_stage_config(ReferenceConfig, args.params)  # checked against the cached statistics
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.evaluation.evaluate import evaluate
    with replaced_together({"--metrics": (args.metrics, "file"), "--speed": (args.speed, "file"),
                            "--grid": (args.grid, "file"), "--nearest": (args.nearest, "file")},
                           {"--train-dir": args.train_dir, "--data": args.data, "--featurizer": args.featurizer,
                            "--reference": args.reference}):
        metrics = evaluate(cfg, reference_cfg, args.train_dir, args.data, args.featurizer, args.reference,
                           args.metrics, args.grid, args.nearest, args.speed)
    print(f"evaluate: FID {metrics['fid']:.3f} (real-vs-real floor {metrics['fid_real_floor']:.3f}), "
          f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, "
          f"{metrics['img_per_s']:.0f} img/s -> {args.metrics}")
    for name, value in metrics.items():
        if name.startswith("fid_inception_"):
            print(f"evaluate: {name} {value:.3f}")


if __name__ == "__main__":
    run_main(main, "evaluate")
