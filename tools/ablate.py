r"""Runs the ablations of MCER's Tables IV and V and prints them beside the paper's numbers.

  python tools/ablate.py --config experiments/mosi.py --workdir runs/mosi_ablation \
      [--seeds 1111,1112,1113] [--only full,no_mi] [--config.key=value ...]

Each grid entry is the experiment config plus a few overrides (`GRID` below).
Entry NAME trains with `python -m mcer_jax.main` in `WORKDIR/NAME/seed_<s>`,
once per seed (default: the config's own seed). Finished runs are skipped and
stopped ones resume, so the same command continues an interrupted grid.

Writes `WORKDIR/ablation.md` (the paper's layout: MAE and Non0 Acc-2, ours as
mean ± std over seeds beside the paper's MOSI values) and `WORKDIR/ablation.csv`
(every test metric, mean and std, values as in `results.json`), and for every
entry `WORKDIR/NAME/seeds.md` and `seeds.csv`.

Ablations of the paper (Zhao et al., IJCNN 2024), on CMU-MOSI:
  Table IV removes one loss: L_m (M-MIB), L_avl (S-MIB), L_dc, L_MI.
  Table V keeps the multimodal (M) and unimodal (S) tasks and adds cross-modal
  (C) heads: none, mt, mt+ma, mt+mv, all three (the full model).
"""

import argparse
import dataclasses
import os
import shlex
import sys

from mcer_jax import research


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row of the ablation tables."""

  name: str  # Folder name and --only value.
  table: str  # "IV" (losses) or "V" (tasks).
  label: str  # The paper's row name.
  overrides: tuple[str, ...]
  paper_mae: float  # The paper's MOSI test MAE.
  paper_acc2: float  # The paper's MOSI test Acc-2 (Non0), in percent.
  same_as: str = ""  # Name of the entry whose runs this row reuses (same config).


# "w/o L_m" and "w/o L_avl" switch the variational encoders off, so the heads
# become plain MLPs: removing a KL loss while keeping the sampled bottleneck
# would leave its noise unregularised. L_dc classifies the gated layers of the
# cross-modal task, so "M+S" (no cross-modal task) also has no L_dc.
GRID = (
    Entry("full", "IV", "MCER", (), 0.699, 86.74),
    Entry("no_m", "IV", "w/o L_m", ("--config.model.multimodal_bottleneck=False",), 0.724, 85.37),
    Entry("no_avl", "IV", "w/o L_avl", ("--config.model.unimodal_bottleneck=False",), 0.721, 84.91),
    Entry("no_dc", "IV", "w/o L_dc", ("--config.model.discriminator=False",), 0.724, 85.06),
    Entry("no_mi", "IV", "w/o L_MI", ("--config.model.mutual_information=False",), 0.720, 84.91),
    Entry("m_s", "V", "M+S", ("--config.model.cross_tasks=", "--config.model.discriminator=False"), 0.732, 85.06),
    Entry("m_s_c_mt", "V", "M+S+C(mt)", ("--config.model.cross_tasks=mt",), 0.735, 85.21),
    Entry("m_s_c_mt_ma", "V", "M+S+C(mt,ma)", ("--config.model.cross_tasks=mt,ma",), 0.727, 86.43),
    Entry("m_s_c_mt_mv", "V", "M+S+C(mt,mv)", ("--config.model.cross_tasks=mt,mv",), 0.708, 85.82),
    Entry("m_s_c_all", "V", "M+S+C(mt,ma,mv)", (), 0.699, 86.74, same_as="full"),
)
GRID_KEYS = {research.override_key(o) for entry in GRID for o in entry.overrides}
TABLE_TITLES = {"IV": "Table IV: losses", "V": "Table V: tasks"}
TABLE_METRICS = ("MAE", "Non0_acc_2")


def run_name(entry: Entry) -> str:
  """Returns the folder name of the runs an entry reads."""
  return entry.same_as or entry.name


def select_entries(only: str) -> list[Entry]:
  """Returns the grid entries named in a comma-separated `--only` value (all when empty)."""
  if not only:
    return list(GRID)
  names = [name.strip() for name in only.split(",") if name.strip()]
  known = {entry.name: entry for entry in GRID}
  unknown = [name for name in names if name not in known]
  if unknown:
    raise research.ResearchError(f"--only={only!r}: unknown entries {unknown}; choose from {', '.join(known)}")
  return [entry for entry in GRID if entry.name in names]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """Returns the tool's options and the `--config.key=value` overrides shared by every entry."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], allow_abbrev=False,
      epilog=f"Entries: {', '.join(e.name for e in GRID)}. Any --config.key=value argument is passed to every run.")
  research.add_run_arguments(parser, "Folder for the runs and the tables.")
  parser.add_argument("--seeds", default="", help="Comma-separated seeds to average (default: the config's seed).")
  parser.add_argument("--only", default="", help="Comma-separated grid entries to run (default: all).")
  args, overrides = research.parse_with_overrides(parser, argv)
  for argument in overrides:
    key = research.override_key(argument)
    if key in GRID_KEYS:
      parser.error(f"{argument}: the ablation grid sets config.{key}; remove this override")
    if key == "seed" and args.seeds:
      parser.error("pass either --seeds or --config.seed, not both")
  return args, overrides


def entry_row(entry: Entry, results, show_paper: bool) -> tuple[list, list]:
  """Builds the Markdown and CSV rows of one entry from its seeds' results."""
  metrics, means, stds = research.summarize(results)
  markdown = [entry.label]
  for metric in TABLE_METRICS:
    markdown.append(research.format_mean_std(metric, means[metric], stds[metric]))
    if show_paper:
      markdown.append(f"{entry.paper_mae:.3f}" if metric == "MAE" else f"{entry.paper_acc2:.2f}")
  csv_row = [entry.table, entry.name, entry.label, run_name(entry), len(results)]
  for metric in metrics:
    csv_row += [means[metric], stds[metric]]
  csv_row += [entry.paper_mae, entry.paper_acc2 / 100]
  return markdown, csv_row


def write_tables(workdir: str, entries, results_by_run, dataset: str, command: str) -> str:
  """Writes ablation.md and ablation.csv; returns the Markdown."""
  show_paper = dataset == "mosi"
  header = ["model"]
  for metric in TABLE_METRICS:
    name = "MAE" if metric == "MAE" else "Acc-2 Non0"
    header += [f"{name} (ours)", f"{name} (paper)"] if show_paper else [f"{name} (ours)"]

  first = results_by_run[run_name(entries[0])]
  metrics = research.order_metrics(first[next(iter(first))])
  csv_header = ["table", "name", "label", "run", "seeds"]
  for metric in metrics:
    csv_header += [f"{metric}_mean", f"{metric}_std"]
  csv_header += ["paper_MAE", "paper_Non0_acc_2"]

  text = [
      "# Ablations of MCER\n",
      f"Command: `{command}`\n",
      "Test metrics of the best checkpoint (selected on the validation split); ours as mean ± "
      "sample standard deviation over seeds, Acc-2 Non0 in percent. "
      + ("Paper: Zhao et al., IJCNN 2024, Tables IV and V (CMU-MOSI).\n" if show_paper else
         f"The paper reports ablations on CMU-MOSI only, so no paper column is shown for {dataset}.\n"),
  ]
  csv_rows = []
  for table in ("IV", "V"):
    rows = []
    for entry in entries:
      if entry.table != table:
        continue
      markdown_row, csv_row = entry_row(entry, results_by_run[run_name(entry)], show_paper)
      rows.append(markdown_row)
      csv_rows.append(csv_row)
    if rows:
      text.append(f"## {TABLE_TITLES[table]}\n")
      text.append(research.markdown_table(header, rows))
  markdown = "\n".join(text)
  research.write_text(os.path.join(workdir, "ablation.md"), markdown)
  research.write_csv(os.path.join(workdir, "ablation.csv"), csv_header, csv_rows)
  return markdown


def main(argv: list[str]) -> int:
  args, overrides = parse_args(argv)
  research.install_signal_handlers()
  entries = select_entries(args.only)
  base = research.resolve_config(args.config, overrides)
  seeds = research.parse_seeds(args.seeds) if args.seeds else [int(base.seed)]
  cache = research.default_jax_cache_dir(args.workdir) if args.jax_cache_dir is None else args.jax_cache_dir
  os.makedirs(args.workdir, exist_ok=True)

  runs = []  # Entries that train, in grid order, each once.
  for entry in entries:
    owner = next(e for e in GRID if e.name == run_name(entry))
    if owner not in runs:
      runs.append(owner)
  # Every run's config is resolved before training, so a bad override fails at once.
  for entry in runs:
    for seed in seeds:
      config = research.resolve_config(args.config, [*overrides, *entry.overrides, f"--config.seed={seed}"])
      research.check_run_config(os.path.join(args.workdir, entry.name, f"seed_{seed}"), config)

  print(f"Ablation grid of {args.config} in {args.workdir}: {len(runs)} configs x {len(seeds)} seeds", flush=True)
  command_args = ["python", "tools/ablate.py", f"--config={args.config}", f"--workdir={args.workdir}"]
  if args.seeds:
    command_args.append(f"--seeds={args.seeds}")
  if args.only:
    command_args.append(f"--only={args.only}")
  command = shlex.join(command_args + overrides)
  results_by_run = {}
  for number, entry in enumerate(runs, start=1):
    directory = os.path.join(args.workdir, entry.name)
    print(f"({number}/{len(runs)}) {entry.name}: {entry.label} {' '.join(entry.overrides)}".rstrip(), flush=True)
    results = research.run_seed_group(
        args.config, directory, seeds, [*overrides, *entry.overrides], jax_cache_dir=cache, prefix="  ")
    results_by_run[entry.name] = results
    research.write_seed_summary(directory, results, f"{entry.label}: {args.config} {' '.join(entry.overrides)}", command)

  markdown = write_tables(args.workdir, entries, results_by_run, str(base.data.name), command)
  print("\n" + markdown, flush=True)
  print(f"Wrote {os.path.join(args.workdir, 'ablation.md')} and {os.path.join(args.workdir, 'ablation.csv')}")
  return 0


if __name__ == "__main__":
  research.run_tool(main)
