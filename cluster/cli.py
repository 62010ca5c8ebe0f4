"""The `relayrl` command.

    relayrl train CONFIG [key=value ...]      run (or resume: checkpoint.resume=RUN_DIR) a training job
    relayrl validate CONFIG [key=value ...]   check a config and print it fully resolved
    relayrl scale RUN_DIR --rollout N         a running job: grow or shrink to N rollout workers between steps
    relayrl plot RUN_DIR                      reward / accuracy curves of a run as a PNG
    relayrl make-tiny-model DIR               build the project's tiny Qwen3 (tokenizer + weights) in DIR
"""

from __future__ import annotations

import argparse
import sys


def _load(args: argparse.Namespace):
    from cluster.config import load_config
    from cluster.validate import validate

    return validate(load_config(args.config, args.overrides))


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from cluster.trainer import train

    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from cluster.config import to_yaml

    cfg = _load(args)
    print(to_yaml(cfg), end="")
    print("# config OK", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from cluster.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from cluster.scaling import DONE, request_scale

    try:
        path = request_scale(args.run_dir, args.rollout)
    except (FileNotFoundError, ValueError) as e:
        print(f"relayrl scale: {e}", file=sys.stderr)
        return 2
    print(f"asked the run for {args.rollout} rollout worker(s): {path} (taken between two steps; the answer "
          f"goes to {path.with_name(DONE)} and the run's log)")
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from cluster.tiny_model import TinyModelSpec, make_tiny_model, num_parameters

    spec = TinyModelSpec(hidden_size=args.hidden_size, num_layers=args.num_layers, moe=args.moe)
    out = make_tiny_model(args.dir, spec, overwrite=True)
    print(f"{out}: {num_parameters(out):,} parameters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relayrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in [("train", cmd_train, "run a training job"),
                            ("validate", cmd_validate, "check a config and print it resolved")]:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", help="YAML file of overrides over the schema defaults (configs/*.yaml)")
        sp.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. trainer.total_steps=20")
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("scale", help="grow or shrink a running job's rollout workers (between steps)")
    sp.add_argument("run_dir")
    sp.add_argument("--rollout", type=int, required=True, help="rollout workers to run")
    sp.set_defaults(fn=cmd_scale)
    sp = sub.add_parser("plot", help="write reward/accuracy curves of a run directory as PNG")
    sp.add_argument("run_dir")
    sp.add_argument("--out", default=None)
    sp.set_defaults(fn=cmd_plot)
    sp = sub.add_parser("make-tiny-model", help="build the tiny local Qwen3 model directory")
    sp.add_argument("dir")
    sp.add_argument("--hidden-size", type=int, default=128)
    sp.add_argument("--num-layers", type=int, default=2)
    sp.add_argument("--moe", action="store_true")
    sp.set_defaults(fn=cmd_make_tiny_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cluster.config import ConfigError
    from cluster.data import DataError

    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"relayrl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
