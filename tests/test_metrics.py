"""VQA normalisation on the official evaluation's known cases; accuracy; hull IoU by hand."""

import pytest

from qgsa_bench.metrics import exact_match, hull_iou, normalize_answer, oracle_patches, patch_boxes, soft_accuracy


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("two dogs.", "2 dogs"), ("None", "0"), ("a cat", "cat"), ("The Red Ball", "red ball"),
    ("isnt", "isn't"), ("dont know", "don't know"), ("yes!", "yes"), ("t-shirt", "t shirt"),
    ("1,000", "1000"), ("3.5", "3.5"), ("end.", "end"), ("  left\tlobe\n", "left lobe"), ("x - ray", "x ray"),
])
def test_normalize_answer_official_cases(raw, expected):
    assert normalize_answer(raw) == expected


def test_soft_and_exact_accuracy():
    refs = ["bat"] * 2 + ["Bat."] + ["stick"] * 7
    assert soft_accuracy("a bat", refs) == 1.0
    assert soft_accuracy("stick", ["stick", "bat", "bat"]) == pytest.approx(1 / 3)
    assert soft_accuracy("club", refs) == 0.0
    assert exact_match("Yes.", ["yes"]) == 1.0 and exact_match("no", ["yes"]) == 0.0


def test_patch_boxes_undo_the_resize():
    # a 4 x 4 grid over a 200 x 100 image: patches are 50 x 25 original pixels
    assert patch_boxes([0, 5, 15], 4, 200, 100) == [(0, 0, 50, 25), (50, 25, 100, 50), (150, 75, 200, 100)]


def test_hull_iou_hand_computed():
    assert hull_iou([0], 2, 100, 100, [0, 0, 50, 50]) == 1.0
    assert hull_iou([0], 2, 100, 100, [0, 0, 100, 100]) == 0.25
    assert hull_iou([0, 3], 2, 100, 100, [0, 0, 100, 100]) == 0.75  # diagonal: a hexagon of 3/4 the area
    assert hull_iou([0], 2, 100, 100, [50, 50, 50, 50]) == 0.0
    assert hull_iou([0], 2, 100, 100, [25, 25, 50, 50]) == pytest.approx(625 / (2500 + 2500 - 625))
    assert hull_iou([], 2, 100, 100, [0, 0, 10, 10]) == 0.0


def test_oracle_reaches_the_best_rectangle():
    # a box exactly on the grid: the oracle recovers it with its 4 corner patches
    picked = oracle_patches(10, 100, 100, [20, 20, 30, 30], 8)
    assert picked == [22, 24, 42, 44] and hull_iou(picked, 10, 100, 100, [20, 20, 30, 30]) == 1.0
    assert len(oracle_patches(10, 100, 100, [20, 20, 30, 30], 1)) == 1  # respects k
