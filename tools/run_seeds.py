r"""Trains one config over several seeds and summarises the test metrics as mean ± std.

  python tools/run_seeds.py --config experiments/mosi.py --workdir runs/mosi_seeds \
      [--seeds 1111,1112,1113,1114,1115] [--config.key=value ...]

Each seed trains with `python -m mcer_jax.main` in `WORKDIR/seed_<s>`, with the
overrides and `--config.seed=<s>`. Seeds whose `results.json` exists are
skipped, and a seed stopped half-way resumes from its last checkpoint, so the
same command continues an interrupted sweep. Ctrl-C (or SIGTERM) makes the
current run save a checkpoint before the tool exits.

Writes `WORKDIR/seeds.csv` (one row per seed, then `mean` and `std`, values as
in `results.json`) and `WORKDIR/seeds.md` (accuracies in percent, mean ± std).
The seeds share JAX's persistent compilation cache (`--jax-cache-dir`), so
only the first seed pays for compilation.
"""

import argparse
import os
import shlex
import sys

from mcer_jax import research


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """Returns the tool's options and the `--config.key=value` overrides."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], allow_abbrev=False,
      epilog="Any --config.key=value argument is passed to every run.")
  research.add_run_arguments(parser, "Folder for the seed runs and the summary.")
  parser.add_argument(
      "--seeds", default=",".join(str(s) for s in research.DEFAULT_SEEDS),
      help="Comma-separated seeds (default: MMSA's 1111-1115).")
  args, overrides = research.parse_with_overrides(parser, argv)
  if any(research.override_key(argument) == "seed" for argument in overrides):
    parser.error("--config.seed is set by this tool for each seed; use --seeds instead")
  return args, overrides


def main(argv: list[str]) -> int:
  args, overrides = parse_args(argv)
  research.install_signal_handlers()
  seeds = research.parse_seeds(args.seeds)
  cache = research.default_jax_cache_dir(args.workdir) if args.jax_cache_dir is None else args.jax_cache_dir
  os.makedirs(args.workdir, exist_ok=True)
  print(f"Training {args.config} with {len(seeds)} seeds in {args.workdir}", flush=True)
  results = research.run_seed_group(args.config, args.workdir, seeds, overrides, jax_cache_dir=cache)

  command = shlex.join(["python", "tools/run_seeds.py", f"--config={args.config}", f"--workdir={args.workdir}", f"--seeds={args.seeds}", *overrides])
  markdown = research.write_seed_summary(args.workdir, results, f"{args.config} over {len(seeds)} seeds", command)
  print("\n" + markdown, flush=True)
  print(f"Wrote {os.path.join(args.workdir, 'seeds.md')} and {os.path.join(args.workdir, 'seeds.csv')}")
  return 0


if __name__ == "__main__":
  research.run_tool(main)
