"""Tests of the MMSA metrics against values worked out by hand."""

import numpy as np
import pytest

from mcer_jax import metrics

# Eight samples with a neutral label (index 1), predictions on 0 and on
# rounding halves (0.5 and 2.5), and values outside [-3, 3].
PRED = [-2.6, -0.4, 0.0, 0.5, 1.5, 2.5, 3.4, -1.2]
TRUE = [-3.0, 0.0, -0.5, 0.4, 2.0, 2.4, 3.0, 1.0]


def test_regression_metrics_hand_values():
  result = metrics.regression_metrics(PRED, TRUE)

  # >= 0: pred F F T T T T T F, true F T F T T T T T -> wrong at 1, 2, 7.
  assert result["Has0_acc_2"] == pytest.approx(5 / 8)
  # Class True: 6 labels, 5 predictions, 4 hits; class False: 2, 3, 1.
  assert result["Has0_F1_score"] == pytest.approx((6 * 8 / 11 + 2 * 2 / 5) / 8)
  # Without index 1; > 0: pred F F T T T T F, true F F T T T T T.
  assert result["Non0_acc_2"] == pytest.approx(6 / 7)
  # Class True: 5 labels, 4 predictions, 4 hits; class False: 2, 3, 2.
  assert result["Non0_F1_score"] == pytest.approx((5 * 8 / 9 + 2 * 4 / 5) / 7)
  # Rounded (half to even) in [-3, 3]: pred -3 -0 0 0 2 2 3 -1, true -3 0 -0 0 2 2 3 1.
  assert result["Mult_acc_7"] == pytest.approx(7 / 8)
  # In [-2, 2]: pred -2 -0 0 0 2 2 2 -1, true -2 0 -0 0 2 2 2 1.
  assert result["Mult_acc_5"] == pytest.approx(7 / 8)
  # |errors| 0.4 0.4 0.5 0.1 0.5 0.1 0.4 2.2.
  assert result["MAE"] == pytest.approx(4.6 / 8)
  assert result["Corr"] == pytest.approx(np.corrcoef(PRED, TRUE)[0, 1])


def test_regression_metrics_keys():
  assert set(metrics.regression_metrics(PRED, TRUE)) == {
      "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
      "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
  }


def test_rounding_is_half_to_even():
  # Half-to-even: 0.5 -> 0 and 2.5 -> 2 both match their labels. Rounding half
  # away from zero would give 1 and 3 and miss both.
  result = metrics.regression_metrics([0.5, 2.5], [0.4, 2.4])
  assert result["Mult_acc_7"] == 1.0
  result = metrics.regression_metrics([0.5, 2.5], [0.6, 2.6])
  assert result["Mult_acc_7"] == 0.0


def test_regression_metrics_accept_column_vectors():
  flat = metrics.regression_metrics(PRED, TRUE)
  column = metrics.regression_metrics(np.array(PRED)[:, None], np.array(TRUE)[:, None])
  assert column == pytest.approx(flat)


def test_all_neutral_labels_give_nan_non0():
  with pytest.warns(RuntimeWarning, match="Corr is undefined"):
    result = metrics.regression_metrics([0.3, -0.2], [0.0, 0.0])
  assert np.isnan(result["Non0_acc_2"])
  assert np.isnan(result["Non0_F1_score"])
  assert result["Has0_acc_2"] == 0.5


def test_constant_predictions_corr_is_nan():
  with pytest.warns(RuntimeWarning, match="Corr is undefined"):
    result = metrics.regression_metrics([0.7, 0.7, 0.7], [1.0, -1.0, 2.0])
  assert np.isnan(result["Corr"])
  assert result["MAE"] == pytest.approx((0.3 + 1.7 + 1.3) / 3)


def test_constant_labels_corr_is_nan():
  with pytest.warns(RuntimeWarning, match="Corr is undefined"):
    result = metrics.sims_metrics([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
  assert np.isnan(result["Corr"])


def test_sims_metrics_hand_values():
  # Labels on the bin edges -0.1, 0.1 and 0.7 (float32, as stored).
  true = np.array([-1.0, -0.8, -0.1, 0.0, 0.1, 0.2, 0.7, 1.0], np.float32)
  pred = np.array([-1.5, -0.6, -0.2, 0.05, 0.1, 0.8, 0.69, 0.0], np.float32)
  result = metrics.sims_metrics(pred, true)

  # Acc-2 classes (<= 0, > 0): true 0 0 0 0 1 1 1 1, pred 0 0 0 1 1 1 1 0.
  assert result["Mult_acc_2"] == pytest.approx(6 / 8)
  # Acc-3: true 0 0 0 1 1 2 2 2, pred 0 0 0 1 1 2 2 1.
  assert result["Mult_acc_3"] == pytest.approx(7 / 8)
  # Acc-5: true 0 0 1 2 2 3 3 4, pred 0 1 1 2 2 4 3 2.
  assert result["Mult_acc_5"] == pytest.approx(5 / 8)
  # Both Acc-2 classes: 4 labels, 4 predictions, 3 hits.
  assert result["F1_score"] == pytest.approx(0.75)
  # On clipped values: |errors| 0 0.2 0.1 0.05 0 0.6 0.01 1.0.
  assert result["MAE"] == pytest.approx(1.96 / 8, abs=1e-6)
  clipped_pred = np.clip(pred, -1, 1).astype(np.float64)
  assert result["Corr"] == pytest.approx(np.corrcoef(clipped_pred, true.astype(np.float64))[0, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sims_label_on_bin_edge_matches_mmsa(dtype):
  # float32 0.1 is 0.10000000149: compared with a float64 edge 0.1 it would
  # fall in (0.1, 1]. MMSA compares in float32, which puts it in (-0.1, 0.1]
  # with the prediction 0.05.
  with pytest.warns(RuntimeWarning, match="Corr is undefined"):
    result = metrics.sims_metrics(np.array([0.05], np.float32), np.array([0.1], dtype))
  assert result["Mult_acc_3"] == 1.0
  assert result["Mult_acc_5"] == 1.0


def test_sims_metrics_keys():
  result = metrics.sims_metrics([0.2, -0.3], [0.1, -0.5])
  assert set(result) == {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}


def _f1_from_precision_recall(true: np.ndarray, pred: np.ndarray) -> float:
  """Weighted F1 from a confusion matrix, precision and recall (sklearn's route)."""
  classes = np.union1d(true, pred)
  position = {c: i for i, c in enumerate(classes)}
  confusion = np.zeros((classes.size, classes.size))
  for t, p in zip(true, pred):
    confusion[position[t], position[p]] += 1
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  hits = np.diag(confusion)
  precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
  recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(hits), where=denominator > 0)
  return float(np.sum(f1 * support) / support.sum())


@pytest.mark.parametrize("seed", range(20))
def test_weighted_f1_matches_confusion_matrix(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 40))
  num_classes = int(rng.integers(1, 5))
  true = rng.integers(0, num_classes, n)
  # Predictions may use a class that never occurs in the labels.
  pred = rng.integers(0, num_classes + 1, n)
  assert metrics.weighted_f1(true, pred) == pytest.approx(_f1_from_precision_recall(true, pred))


def test_weighted_f1_single_class_all_correct():
  assert metrics.weighted_f1(np.array([True, True]), np.array([True, True])) == 1.0


def test_weighted_f1_class_never_predicted():
  # Class 0: 2 labels, 0 predictions -> F1 0; class 1: 2 labels, 4 predictions, 2 hits.
  assert metrics.weighted_f1(np.array([0, 0, 1, 1]), np.array([1, 1, 1, 1])) == pytest.approx(
      (2 * 0 + 2 * (4 / 6)) / 4
  )


def test_size_mismatch_is_rejected():
  with pytest.raises(ValueError, match="3 predictions and 2 labels"):
    metrics.regression_metrics([0.0, 1.0, 2.0], [0.0, 1.0])


def test_empty_input_is_rejected():
  with pytest.raises(ValueError, match="empty"):
    metrics.sims_metrics([], [])


def test_non_finite_prediction_is_rejected():
  with pytest.raises(ValueError, match="pred contains 1 NaN or infinite values"):
    metrics.regression_metrics([0.0, np.nan], [0.0, 1.0])
