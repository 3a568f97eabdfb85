"""prepare: ingest the source images into uint8 arrays, a manifest and a sample grid."""

from ganforge.config import PrepareConfig, load_stage_config
from ganforge.entry import ArgumentParser, run_main
from ganforge.files import replaced_together


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="prepared-data directory")
    parser.add_argument("--grid", required=True, help="PNG grid of prepared images")
    args = parser.parse_args()
    cfg = load_stage_config(PrepareConfig, args.params)
    # imported once the params are checked, so a mistake in them is reported before torch loads
    from ganforge.data.prepare import prepare
    with replaced_together({"--out": (args.out, "dir"), "--grid": (args.grid, "file")},
                           {"prepare.path": cfg.source_path}):
        manifest = prepare(cfg, out_dir=args.out, grid_path=args.grid)
    print(f"prepare: {manifest['counts']} images at {cfg.resolution}px -> {args.out}")


if __name__ == "__main__":
    run_main(main, "prepare")
