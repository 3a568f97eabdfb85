"""train: train the GAN on the prepared training split (under torchrun, on 1..N processes)."""

from ganforge.config import TrainConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import check_outputs


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="prepared-data directory")
    parser.add_argument("--out", required=True, help="directory for weights and the checkpoint")
    parser.add_argument("--live", required=True, help="dvclive directory for metrics and sample grids")
    parser.add_argument("--featurizer", help="featurizer weights (.safetensors) for the in-loop FID")
    args = parser.parse_args()
    cfg = load_stage_config(TrainConfig, args.params)
    # Checked, not held back: checkpoints land in --out as training goes, so that a rerun resumes.
    check_outputs({"--out": (args.out, "dir"), "--live": (args.live, "dir")},
                  {"--data": args.data, "--featurizer": args.featurizer})
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.distributed import is_main_process
    from ganforge.training.loop import train
    result = train(cfg, data_dir=args.data, out_dir=args.out, live_dir=args.live, featurizer_path=args.featurizer)
    if is_main_process():
        best = f", best in-loop FID {result.best_fid:.3f} at {result.best_kimg:.1f} kimg" if result.best_fid else ""
        print(f"train: {result.cur_nimg / 1000:.1f} kimg in {result.steps} steps, "
              f"{result.train_img_per_s:.0f} img/s{best} -> {args.out}")


if __name__ == "__main__":
    run_main(main, "train")
