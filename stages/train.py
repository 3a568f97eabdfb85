"""train: train the GAN on the prepared training split."""

import argparse

from ganforge.config import TrainConfig, load_stage_config
from ganforge.entry import run_main
from ganforge.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="prepared-data directory")
    parser.add_argument("--out", required=True, help="directory for weights and the checkpoint")
    parser.add_argument("--live", required=True, help="dvclive directory for loss curves")
    args = parser.parse_args()
    cfg = load_stage_config(TrainConfig, args.params)
    result = train(cfg, data_dir=args.data, out_dir=args.out, live_dir=args.live)
    print(f"train: {result.cur_nimg / 1000:.1f} kimg in {result.steps} steps, "
          f"{result.train_img_per_s:.0f} img/s -> {args.out}")


if __name__ == "__main__":
    run_main(main, "train")
