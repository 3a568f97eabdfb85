"""optimize: build the optimize.variants, measure speed and FID, keep the fastest within budget."""

from ganforge.config import EvaluateConfig, OptimizeConfig, ReferenceConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import replaced_together


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train-dir", required=True, help="the train stage's output directory")
    parser.add_argument("--featurizer", required=True, help="featurizer weights (.safetensors)")
    parser.add_argument("--reference", required=True, help="the reference stage's statistics directory")
    parser.add_argument("--out", required=True, help="directory for the winner's weights and recipe")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--table", required=True, help="CSV table of variants to write")
    args = parser.parse_args()
    cfg = load_stage_config(OptimizeConfig, args.params)
    eval_cfg = load_stage_config(EvaluateConfig, args.params)  # the pinned FID protocol
    reference_cfg = load_stage_config(ReferenceConfig, args.params)
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.optimization.optimize import optimize, summary_lines
    with replaced_together({"--out": (args.out, "dir"), "--metrics": (args.metrics, "file"),
                            "--table": (args.table, "file")},
                           {"--train-dir": args.train_dir, "--featurizer": args.featurizer,
                            "--reference": args.reference}):
        metrics = optimize(cfg, eval_cfg, reference_cfg, args.train_dir, args.featurizer, args.reference, args.out,
                           args.metrics, args.table)
    print("\n".join(summary_lines(metrics, args.out)))


if __name__ == "__main__":
    run_main(main, "optimize")
