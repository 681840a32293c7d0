"""Evaluation metrics of multimodal sentiment analysis, named as MMSA names them.

The conventions follow MMSA's `MetricsTop` (thuiar/MMSA, `utils/metricsTop.py`):

- Accuracies are fractions in [0, 1], not percentages.
- `Mult_acc_7` and `Mult_acc_5` clip predictions and labels to [-3, 3] and
  [-2, 2] and compare `np.round` of both. `np.round` rounds half to even, so
  2.5 becomes 2 and -0.5 becomes -0. MMSA uses the same call, and MOSI's
  labels, averages of several annotators' ratings, include such halves.
- Class decisions (rounding, thresholds, CH-SIMS bins) run in float32, as
  MMSA's do on float32 tensors. A CH-SIMS label stored as float32 0.1 then
  falls in the (-0.1, 0.1] bin exactly as in MMSA, which it would not if the
  comparison were made in float64.
- `MAE` and `Corr` are computed in float64. MMSA rounds the MOSI/MOSEI values
  to 4 decimals for display; these functions return them unrounded.
- `Corr` is Pearson's r. It is undefined when predictions or labels are
  constant: it is then NaN and a RuntimeWarning is issued (MMSA's
  `np.corrcoef` also returns NaN there).
- The weighted F1 is sklearn's `f1_score(average="weighted")`: the F1 of each
  class seen in the labels or the predictions, weighted by the class's count in
  the labels. It is computed here from counts, without sklearn.
"""

import warnings

import numpy as np

# CH-SIMS class bins: class i contains the values v with edges[i] < v <= edges[i + 1].
_SIMS_EDGES_2 = np.array([-1.01, 0.0, 1.01], np.float32)
_SIMS_EDGES_3 = np.array([-1.01, -0.1, 0.1, 1.01], np.float32)
_SIMS_EDGES_5 = np.array([-1.01, -0.7, -0.1, 0.1, 0.7, 1.01], np.float32)


def _validated_vectors(pred, true) -> tuple[np.ndarray, np.ndarray]:
  """Flattens `pred` and `true` to float32 vectors and checks them."""
  pred = np.asarray(pred, np.float32).reshape(-1)
  true = np.asarray(true, np.float32).reshape(-1)
  if pred.size != true.size:
    raise ValueError(
        f"pred and true must hold one value per sample: found {pred.size} predictions and "
        f"{true.size} labels. Pass the predictions and labels of the same samples."
    )
  if pred.size == 0:
    raise ValueError("pred and true are empty: metrics need at least one sample.")
  for name, values in (("pred", pred), ("true", true)):
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise ValueError(
          f"{name} contains {bad.size} NaN or infinite values (first at position {bad[0]}); "
          "metrics need finite values, so check the model outputs or the labels."
      )
  return pred, true


def weighted_f1(true: np.ndarray, pred: np.ndarray) -> float:
  """Returns the F1 score averaged over classes, weighted by each class's support.

  Equal to sklearn's `f1_score(true, pred, average="weighted")`: classes are
  the union of the values in `true` and `pred`, the F1 of class c is
  2 TP_c / (n_pred_c + n_true_c), and a class absent from `true` gets weight
  0. Returns NaN for empty input.
  """
  true = np.asarray(true).reshape(-1)
  pred = np.asarray(pred).reshape(-1)
  if true.size == 0:
    return float("nan")
  classes = np.union1d(true, pred)
  score = 0.0
  for c in classes:
    n_true = np.sum(true == c)
    n_pred = np.sum(pred == c)
    true_positives = np.sum((true == c) & (pred == c))
    score += n_true * (2.0 * true_positives / (n_true + n_pred))
  return float(score / true.size)


def _accuracy(pred: np.ndarray, true: np.ndarray) -> float:
  if true.size == 0:
    return float("nan")
  return float(np.mean(pred == true))


def _pearson(pred: np.ndarray, true: np.ndarray) -> float:
  pred = pred.astype(np.float64) - pred.astype(np.float64).mean()
  true = true.astype(np.float64) - true.astype(np.float64).mean()
  norm = np.sqrt(np.sum(pred**2) * np.sum(true**2))
  if norm == 0.0:
    warnings.warn(
        "Corr is undefined because the predictions or the labels are constant; returning NaN.",
        RuntimeWarning,
        stacklevel=3,
    )
    return float("nan")
  return float(np.sum(pred * true) / norm)


def _mae(pred: np.ndarray, true: np.ndarray) -> float:
  return float(np.mean(np.abs(pred.astype(np.float64) - true.astype(np.float64))))


def regression_metrics(pred, true) -> dict[str, float]:
  """Computes MMSA's MOSI/MOSEI regression metrics.

  Args:
    pred: predicted sentiment scores, any shape with one value per sample.
    true: human labels `y_m` in [-3, 3], as many values as `pred`.

  Returns:
    A dict with
    `Has0_acc_2`, `Has0_F1_score`: negative (< 0) against non-negative (>= 0),
      on all samples;
    `Non0_acc_2`, `Non0_F1_score`: negative (< 0) against positive (> 0), on
      the samples whose label is not 0 (NaN when every label is 0);
    `Mult_acc_5`, `Mult_acc_7`: exact match of the rounded values clipped to
      [-2, 2] and [-3, 3];
    `MAE`: mean absolute error; `Corr`: Pearson's r (NaN when undefined).

  Raises:
    ValueError: when the sizes differ, the input is empty or not finite.
  """
  pred, true = _validated_vectors(pred, true)

  rounded_7 = np.round(np.clip(pred, -3.0, 3.0)), np.round(np.clip(true, -3.0, 3.0))
  rounded_5 = np.round(np.clip(pred, -2.0, 2.0)), np.round(np.clip(true, -2.0, 2.0))

  non_zero = true != 0
  non_zero_pred = pred[non_zero] > 0
  non_zero_true = true[non_zero] > 0
  has_zero_pred = pred >= 0
  has_zero_true = true >= 0

  return {
      "Has0_acc_2": _accuracy(has_zero_pred, has_zero_true),
      "Has0_F1_score": weighted_f1(has_zero_true, has_zero_pred),
      "Non0_acc_2": _accuracy(non_zero_pred, non_zero_true),
      "Non0_F1_score": weighted_f1(non_zero_true, non_zero_pred),
      "Mult_acc_5": _accuracy(*rounded_5),
      "Mult_acc_7": _accuracy(*rounded_7),
      "MAE": _mae(pred, true),
      "Corr": _pearson(pred, true),
  }


def _sims_classes(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
  # searchsorted(side="left") returns the first j with edges[j] >= v, so
  # edges[j - 1] < v <= edges[j] and the class is j - 1.
  return np.searchsorted(edges, values, side="left") - 1


def sims_metrics(pred, true) -> dict[str, float]:
  """Computes MMSA's CH-SIMS regression metrics.

  Predictions and labels are clipped to [-1, 1] first, and every metric,
  `MAE` and `Corr` included, is computed on the clipped values as MMSA does.
  The classes are
  Acc-2: [-1, 0], (0, 1];
  Acc-3: [-1, -0.1], (-0.1, 0.1], (0.1, 1];
  Acc-5: [-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1].

  Args:
    pred: predicted sentiment scores, one value per sample.
    true: human labels `y_m` in [-1, 1], as many values as `pred`.

  Returns:
    A dict with `Mult_acc_2`, `Mult_acc_3`, `Mult_acc_5`, `F1_score` (the
    weighted F1 of the two Acc-2 classes), `MAE` and `Corr`.

  Raises:
    ValueError: when the sizes differ, the input is empty or not finite.
  """
  pred, true = _validated_vectors(pred, true)
  pred = np.clip(pred, np.float32(-1.0), np.float32(1.0))
  true = np.clip(true, np.float32(-1.0), np.float32(1.0))

  pred_2, true_2 = _sims_classes(pred, _SIMS_EDGES_2), _sims_classes(true, _SIMS_EDGES_2)
  pred_3, true_3 = _sims_classes(pred, _SIMS_EDGES_3), _sims_classes(true, _SIMS_EDGES_3)
  pred_5, true_5 = _sims_classes(pred, _SIMS_EDGES_5), _sims_classes(true, _SIMS_EDGES_5)

  return {
      "Mult_acc_2": _accuracy(pred_2, true_2),
      "Mult_acc_3": _accuracy(pred_3, true_3),
      "Mult_acc_5": _accuracy(pred_5, true_5),
      "F1_score": weighted_f1(true_2, pred_2),
      "MAE": _mae(pred, true),
      "Corr": _pearson(pred, true),
  }
