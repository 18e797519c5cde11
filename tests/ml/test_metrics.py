"""`geoseg_assets.ml.metrics`: exact confusion-matrix metrics against hand-computed values and a brute-force loop."""

import io
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from geoseg_assets.ml.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    confusion_matrix_png,
    miou_note,
    per_class_markdown,
    per_class_rows,
    per_tile_metrics,
    segmentation_metrics,
)

NAMES = ["water", "forest", "urban"]

# 3 classes (0, 1, 2) on 4x4; the bottom-right pixel is ignored (truth 255).
TRUTH = np.array([[0, 0, 0, 0],
                  [0, 0, 1, 1],
                  [1, 1, 1, 1],
                  [2, 2, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 0, 0, 1],
                 [0, 2, 1, 1],
                 [1, 1, 0, 1],
                 [2, 2, 1, 0]], dtype=np.uint8)
# truth 0 (6 px) -> pred 0,0,0,1,0,2 ; truth 1 (6 px) -> pred 1,1,1,1,0,1 ; truth 2 (3 px) -> pred 2,2,1
HAND_CM = [[4, 1, 1],
           [1, 5, 0],
           [0, 1, 2]]


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def brute_force_cm(y_true, y_pred, class_ids, ignore_id=255):
    cm = [[0] * len(class_ids) for _ in class_ids]
    for t, p in zip(np.ravel(y_true).tolist(), np.ravel(y_pred).tolist()):
        if t != ignore_id:
            cm[class_ids.index(t)][class_ids.index(p)] += 1
    return np.array(cm)


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(TRUTH, PRED, [0, 1, 2])
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    assert cm.tolist() == HAND_CM


def test_metrics_by_hand(no_warnings):
    m = segmentation_metrics(np.array(HAND_CM), NAMES)
    # column sums (predicted) 5, 7, 3; row sums (support) 6, 6, 3; 15 pixels, 11 on the diagonal
    # water:  tp 4, fp 1, fn 2 -> IoU 4/7, P 4/5, R 4/6, F1 8/11
    # forest: tp 5, fp 2, fn 1 -> IoU 5/8, P 5/7, R 5/6, F1 10/13
    # urban:  tp 2, fp 1, fn 1 -> IoU 2/4, P 2/3, R 2/3, F1 4/6
    expected = {"water": (4 / 7, 8 / 11, 4 / 5, 4 / 6, 6, 5),
                "forest": (5 / 8, 10 / 13, 5 / 7, 5 / 6, 6, 7),
                "urban": (2 / 4, 4 / 6, 2 / 3, 2 / 3, 3, 3)}
    assert list(m["per_class"]) == NAMES
    for name, (iou, f1, precision, recall, support, predicted) in expected.items():
        c = m["per_class"][name]
        assert c["iou"] == pytest.approx(iou) and c["f1"] == pytest.approx(f1)
        assert c["precision"] == pytest.approx(precision) and c["recall"] == pytest.approx(recall)
        assert (c["support"], c["predicted"]) == (support, predicted)
    assert m["miou"] == pytest.approx(95 / 168)  # (4/7 + 5/8 + 1/2) / 3 = (32 + 35 + 28) / 56 / 3
    assert m["miou_all_classes"] == m["miou"]  # every class is present: both figures agree
    assert [m["per_class"][n]["share"] for n in NAMES] == pytest.approx([6 / 15, 6 / 15, 3 / 15])
    assert m["fwiou"] == pytest.approx(81 / 140)  # (6*4/7 + 6*5/8 + 3*1/2) / 15 = 243/28/15
    assert m["mean_dice"] == pytest.approx(928 / 1287)  # (8/11 + 10/13 + 2/3) / 3 = (312 + 330 + 286)/429/3
    assert m["pixel_accuracy"] == pytest.approx(11 / 15)
    assert m["counts"] == {"pixels": 15, "correct": 11, "classes_present": 3, "classes_predicted_only": 0, "classes": 3}


def test_ignored_pixels_change_nothing_whatever_the_prediction():
    rng = np.random.default_rng(1)
    truth = TRUTH.copy()
    truth[0, :2] = 255  # two more ignored pixels
    base = confusion_matrix(truth, PRED, [0, 1, 2])
    assert base.sum() == 13
    for _ in range(5):
        pred = PRED.copy()
        pred[truth == 255] = rng.choice([0, 1, 2, 99, 255], size=int((truth == 255).sum()))
        assert np.array_equal(confusion_matrix(truth, pred, [0, 1, 2]), base)


def test_ignore_none_keeps_every_pixel_and_ignore_cannot_be_a_class():
    truth = np.where(TRUTH == 255, 2, TRUTH)
    assert confusion_matrix(truth, PRED, [0, 1, 2], ignore_id=None).sum() == 16
    with pytest.raises(ValueError, match="also a class"):
        confusion_matrix(TRUTH, PRED, [0, 1, 255])


def test_non_contiguous_class_ids():
    ids = [1, 3, 7]
    lut = np.array(ids + [255])
    truth, pred = lut[np.where(TRUTH == 255, 3, TRUTH)], lut[PRED]
    assert confusion_matrix(truth, pred, ids).tolist() == HAND_CM
    # class order follows class_ids, not numeric order
    assert confusion_matrix(truth, pred, [7, 3, 1]).tolist() == [[2, 1, 0], [0, 5, 1], [1, 1, 4]]


def test_unknown_ids_raise_instead_of_being_dropped():
    truth = np.array([1, 3, 7, 255])
    with pytest.raises(ValueError, match=r"y_pred holds ids \[2\]"):
        confusion_matrix(truth, np.array([1, 2, 7, 7]), [1, 3, 7])
    with pytest.raises(ValueError, match=r"y_pred holds ids \[8\]"):
        confusion_matrix(truth, np.array([1, 3, 8, 7]), [1, 3, 7])
    with pytest.raises(ValueError, match=r"y_true holds ids \[4\]"):
        confusion_matrix(np.array([1, 4, 7]), np.array([1, 3, 7]), [1, 3, 7])
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(truth, truth[:3], [1, 3, 7])
    with pytest.raises(TypeError):
        confusion_matrix(truth.astype(float), truth, [1, 3, 7])


def test_matches_brute_force_loop_on_random_arrays():
    rng = np.random.default_rng(42)
    ids = [1, 3, 7, 12]
    for shape in [(3, 17, 23), (101,), (2, 2, 5, 9)]:
        truth = rng.choice(ids + [255], size=shape, p=[0.3, 0.3, 0.2, 0.1, 0.1]).astype(np.uint8)
        pred = rng.choice(ids, size=shape).astype(np.int64)
        expected = brute_force_cm(truth, pred, ids)
        assert expected.sum() == (truth != 255).sum()
        assert np.array_equal(confusion_matrix(truth, pred, ids), expected)


def test_batches_and_torch_equal_one_numpy_call():
    rng = np.random.default_rng(7)
    ids = [0, 1, 2, 5]
    truth = rng.choice(ids + [255], size=(10, 32, 32)).astype(np.uint8)
    pred = rng.choice(ids, size=(10, 32, 32)).astype(np.int64)
    whole = confusion_matrix(truth, pred, ids)
    assert np.array_equal(confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred), ids), whole)

    acc = ConfusionAccumulator(ids)
    for lo, hi in [(0, 3), (3, 4), (4, 10)]:
        acc.add(torch.from_numpy(truth[lo:hi]), pred[lo:hi])  # mixed torch / numpy
    assert np.array_equal(acc.matrix, whole)

    a, b = ConfusionAccumulator(ids).add(truth[:6], pred[:6]), ConfusionAccumulator(ids).add(truth[6:], pred[6:])
    merged = a.merge(b)
    assert np.array_equal(merged.matrix, whole)
    assert np.array_equal(a.matrix, confusion_matrix(truth[:6], pred[:6], ids))  # inputs unchanged
    with pytest.raises(ValueError):
        a.merge(ConfusionAccumulator([0, 1, 2]))
    acc.reset()
    assert acc.matrix.sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_are_moved_to_cpu():
    truth, pred = torch.from_numpy(TRUTH).cuda(), torch.from_numpy(PRED).cuda()
    assert ConfusionAccumulator([0, 1, 2]).add(truth, pred).matrix.tolist() == HAND_CM


def test_absent_class_is_nan_and_predicted_only_class_counts_only_in_the_all_class_figure(no_warnings):
    # classes 0..3: 3 never appears; 2 is predicted once but never true
    truth = np.array([0, 0, 1, 1, 255])
    pred = np.array([0, 2, 1, 1, 3])
    cm = confusion_matrix(truth, pred, [0, 1, 2, 3])
    assert cm.tolist() == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    m = segmentation_metrics(cm, ["a", "b", "c", "d"])
    d, c = m["per_class"]["d"], m["per_class"]["c"]
    assert all(math.isnan(d[k]) for k in ("iou", "f1", "precision", "recall"))
    assert (c["iou"], c["f1"], c["precision"], c["support"], c["predicted"]) == (0.0, 0.0, 0.0, 0, 1)
    assert math.isnan(c["recall"])
    # IoU a = 1/2, b = 2/2: mIoU over the 2 classes in the truth; the all-class figure adds c (predicted only) as 0,
    # d (nowhere) stays out of both
    assert m["miou"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["miou_all_classes"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["mean_dice"] == pytest.approx((2 / 3 + 1.0) / 2)  # F1 a = 2*1/(2+1)
    assert m["fwiou"] == pytest.approx((2 * 0.5 + 2 * 1.0) / 4)
    assert (m["counts"]["classes_present"], m["counts"]["classes_predicted_only"]) == (2, 1)
    assert [m["per_class"][n]["present"] for n in "abcd"] == [True, True, False, False]


# water and forest in the truth (8 px each); urban absent from it but predicted on 3 px.
ABSENT_CM = [[5, 1, 2],
             [1, 6, 1],
             [0, 0, 0]]


def test_miou_over_present_classes_vs_all_classes_by_hand(no_warnings):
    m = segmentation_metrics(np.array(ABSENT_CM), NAMES)
    # water: tp 5, support 8, predicted 6 -> union 9, IoU 5/9; forest: tp 6, support 8, predicted 7 -> IoU 6/9;
    # urban: support 0, predicted 3 -> IoU 0. Its 3 false positives are false negatives of water (2) and forest (1):
    # they still lower the present classes' IoU.
    assert m["per_class"]["water"]["iou"] == pytest.approx(5 / 9)
    assert m["per_class"]["forest"]["iou"] == pytest.approx(6 / 9)
    urban = m["per_class"]["urban"]
    assert (urban["iou"], urban["support"], urban["predicted"], urban["present"]) == (0.0, 0, 3, False)
    assert m["miou"] == pytest.approx(11 / 18)  # (5/9 + 6/9) / 2 = 0.6111
    assert m["miou_all_classes"] == pytest.approx(11 / 27)  # (5/9 + 6/9 + 0) / 3 = 0.4074
    assert m["fwiou"] == pytest.approx((8 * 5 / 9 + 8 * 6 / 9) / 16)
    assert m["pixel_accuracy"] == pytest.approx(11 / 16)


def test_per_class_table_rounds_and_says_absent(no_warnings):
    m = segmentation_metrics(np.array(ABSENT_CM), NAMES)
    rows = {r["class"]: r for r in per_class_rows(m)}
    assert rows["water"] == {"class": "water", "support": 8, "share": 0.5, "predicted": 6, "present": True,
                             "iou": 0.5556, "f1": 0.7143, "precision": 0.8333, "recall": 0.625}
    assert rows["urban"] == {"class": "urban", "support": 0, "share": 0.0, "predicted": 3, "present": False,
                             "iou": None, "f1": None, "precision": None, "recall": None}
    lines = per_class_markdown(m).splitlines()
    assert lines[0] == "| class | support px | share | IoU | F1 | precision | recall | predicted px |"
    assert lines[2] == "| water | 8 | 0.5000 | 0.5556 | 0.7143 | 0.8333 | 0.6250 | 6 |"
    assert lines[4] == "| urban | 0 | absent | absent | absent | absent | absent | 3 |"
    assert miou_note(m) == ("mIoU over the 2 classes present in the truth (absent: urban); the all-class mIoU also "
                            "counts urban (predicted, absent from the truth) as IoU 0")
    never_predicted = segmentation_metrics(np.array([[3, 0], [1, 0]]), ["a", "b"])  # b present, never predicted
    assert per_class_markdown(never_predicted).splitlines()[3] == "| b | 1 | 0.2500 | 0.0000 | 0.0000 | n/a | 0.0000 | 0 |"
    assert miou_note(never_predicted).endswith("(every class is present); the all-class mIoU equals it (no absent "
                                               "class was predicted)")


def test_empty_matrix_is_all_nan_without_warnings(no_warnings):
    m = segmentation_metrics(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert all(math.isnan(m[k]) for k in ("miou", "fwiou", "mean_dice", "pixel_accuracy"))
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((2, 2)), ["a"])


def test_perfect_prediction_is_one_everywhere(no_warnings):
    rng = np.random.default_rng(3)
    truth = rng.choice([0, 1, 2], size=(8, 8))
    m = segmentation_metrics(confusion_matrix(truth, truth, [0, 1, 2]), NAMES)
    assert m["miou"] == m["fwiou"] == m["mean_dice"] == m["pixel_accuracy"] == 1.0
    for c in m["per_class"].values():
        assert c["iou"] == c["f1"] == c["precision"] == c["recall"] == 1.0


def test_confusion_matrix_png(no_warnings):
    with pytest.raises(ValueError):
        confusion_matrix_png(np.ones((4, 3), dtype=np.int64), NAMES)
    cm = np.array([[4, 1, 1, 0], [1, 5, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])  # an empty row/column must not warn
    names = NAMES + ["bare"]
    for normalize in ("true", "pred", "all", None):
        png = confusion_matrix_png(cm, names, normalize=normalize)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as img:
            assert img.size == (600, 500)
    assert confusion_matrix_png(cm, names) == confusion_matrix_png(cm, names)  # deterministic bytes
    with pytest.raises(ValueError):
        confusion_matrix_png(cm, names, normalize="rows")


def test_per_tile_metrics_worst_first():
    ids = [0, 1]
    perfect = np.array([[0, 1], [1, 0]])
    half = np.array([[0, 1], [0, 1]])  # vs perfect: tp0 1, tp1 1, 0->1 1, 1->0 1: IoU 1/3 each
    rows = per_tile_metrics([
        ("t3", perfect, perfect),
        ("t2", perfect, half),
        ("t1", perfect, half),
        ("t0", np.full((2, 2), 255), half),  # nothing labelled -> NaN, last
    ], ids)
    assert [r["tile_id"] for r in rows] == ["t1", "t2", "t3", "t0"]
    assert rows[0]["miou"] == pytest.approx(1 / 3) and rows[0]["pixel_accuracy"] == pytest.approx(0.5)
    assert rows[2]["miou"] == 1.0 and rows[2]["pixels"] == 4
    assert math.isnan(rows[3]["miou"]) and rows[3]["pixels"] == 0
    # a tile holding one class: its mIoU is that class's IoU (2/4), class 1 (only predicted) does not count as 0
    one_class = per_tile_metrics([("water_only", np.zeros((2, 2), dtype=np.uint8), np.array([[0, 0], [1, 1]]))], ids)
    assert one_class[0]["miou"] == 0.5
