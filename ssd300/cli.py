"""``python -m ssd300 COMMAND``: the library's command line."""

import argparse
import sys


def _cmd_info(args):
    from .priors import priors_from_model
    from .ssd_v2 import SSD300

    model = SSD300((args.size, args.size, 3), num_classes=args.num_classes)
    model.summary(line_length=110)
    print(f"parameters: {model.count_params():,}")
    print(f"priors: {len(priors_from_model(model))}")
    return 0


def _cmd_priors(args):
    from .priors import priors_from_model, save_priors
    from .ssd_v2 import SSD300

    priors = priors_from_model(SSD300((args.size, args.size, 3)))
    save_priors(priors, args.out)
    print(f"wrote {len(priors)} priors to {args.out}")
    return 0


def _cmd_synth(args):
    from .synth import make_synthetic_voc

    try:
        out = make_synthetic_voc(args.out, images=args.images, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.images} images to {out}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ssd300", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="build SSD300, print its summary and number of priors")
    p.add_argument("--size", type=int, default=300, help="input height and width (default 300)")
    p.add_argument("--num-classes", type=int, default=21)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("priors", help="write the model's prior boxes as a pickle")
    p.add_argument("out", nargs="?", default="prior_boxes_ssd300.pkl")
    p.add_argument("--size", type=int, default=300)
    p.set_defaults(func=_cmd_priors)

    p = sub.add_parser("synth", help="write a synthetic VOC-format dataset of shapes")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=_cmd_synth)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
