"""The benchmark tool runs end to end in its quick mode and reports every number."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_benchmark_quick_reports_json(tmp_path, minilm, mosi_real):
  command = [
      sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", "--skip_mmsa",
      "--pretrained", str(minilm),
      "--data", str(mosi_real / "mmsa" / "unaligned_50.pkl"),
      "--data_dir", str(tmp_path / "tfds"),
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-4000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ("speedup_vs_mmsa", "ours_samples_per_s", "mmsa_samples_per_s", "ours_first_step_s",
              "mcer_samples_per_s", "utilisation"):
    assert key in summary
  assert summary["ours_samples_per_s"] > 0
  assert summary["mcer_samples_per_s"] > 0
  assert 0 < summary["utilisation"] < 2
  assert summary["mmsa_samples_per_s"] is None  # --skip_mmsa
  assert "samples/s" in result.stdout
