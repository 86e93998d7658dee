"""Distillation diagnostics (ev3.diagnostics) against hand-computed values, and their report tables."""

import math

import numpy as np
import pandas as pd
import pytest

from ev3 import diagnostics
from ev3.report import aggregate as agg
from test_report import first, write_run

P = np.array([[0.5, 0.25, 0.25], [0.995, 0.004, 0.001], [0.1, 0.2, 0.7]])
LOGITS = np.log(P) + np.array([[3.0], [-1.0], [0.5]])  # a per-row constant does not change the softmax


def test_confidence_by_hand():
    c = diagnostics.confidence(LOGITS)
    assert c["mean_max_prob"] == pytest.approx((0.5 + 0.995 + 0.7) / 3)
    entropy = [-sum(p * math.log(p) for p in row) for row in P]
    assert c["mean_entropy"] == pytest.approx(np.mean(entropy))
    assert c["confident_fraction"] == pytest.approx(1 / 3)  # only 0.995 > 0.99


def test_fidelity_by_hand():
    student = np.log(np.array([[0.25, 0.5, 0.25], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]))
    f = diagnostics.fidelity(student, LOGITS)
    assert f["agreement"] == pytest.approx(2 / 3)  # argmax 1 vs 0 on the first row
    kl = [sum(pt * math.log(pt / ps) for pt, ps in zip(t, s)) for t, s in zip(P, np.exp(student))]
    assert f["kl_teacher_student"] == pytest.approx(np.mean(kl))
    assert diagnostics.fidelity(LOGITS, LOGITS)["kl_teacher_student"] == pytest.approx(0.0, abs=1e-12)


def test_confidently_wrong_by_hand():
    logits = np.log(np.array([[0.995, 0.004, 0.001], [0.995, 0.004, 0.001], [0.98, 0.01, 0.01], [0.001, 0.998, 0.001]]))
    # row 0: confident and right; row 1: confident, teacher says 2; row 2: wrong but not confident; row 3: confident, wrong
    assert diagnostics.confidently_wrong(logits, np.array([0, 2, 1, 0])) == pytest.approx(2 / 4)
    assert diagnostics.confidently_wrong(logits, np.array([0, 0, 1, 1])) == 0.0


def test_training_views_are_fixed_augmented_and_identity_without_augmentation(mnist1d):
    train = {"augment": {"translate": 4, "iid_noise": 0.05}}
    a, b = diagnostics.training_views(train, mnist1d), diagnostics.training_views(train, mnist1d)
    np.testing.assert_array_equal(a, b)
    clean = diagnostics.training_views({}, mnist1d)
    assert a.shape == clean.shape == (diagnostics.VIEW_SAMPLES, 40)
    rows = {r.tobytes() for r in np.asarray(mnist1d.splits["train"][0])}
    assert all(r.tobytes() in rows for r in np.asarray(clean))
    assert not any(r.tobytes() in rows for r in np.asarray(a))


def _views(p):
    return {"samples": 1024, "augmented": True, "mixup": False, "mean_max_prob": p, "mean_entropy": 1 - p,
            "confident_fraction": p / 2}


def test_fidelity_and_ev3_tables_are_the_seed_means(tmp_path):
    for seed, (p, kl) in enumerate([(0.9, 0.2), (0.8, 0.4)]):
        write_run(tmp_path, "kd", seed, first(100 + seed), teacher_views=_views(p), test_kl_teacher_student=kl)
        decisions = [{"grew": False, "confidently_wrong": 0.1 * (seed + 1)}, {"grew": True},
                     {"grew": False, "confidently_wrong": 0.3 * (seed + 1)}]
        ev3 = {"rounds": {"total": 3, "moved_current": 1, "moved_stable": 1, "rolled_back": 0, "grew": 1},
               "final_current_test_accuracy": 0.4 + 0.1 * seed, "selected_stable_test_accuracy": 0.3,
               "selected_stable_val_accuracy": 0.3, "decisions": decisions}
        write_run(tmp_path, "ev3", seed, first(110), teacher_views=_views(p), test_kl_teacher_student=kl, ev3=ev3)
    agg.aggregate(str(tmp_path))
    table = pd.read_csv(tmp_path / "tables" / "fidelity.csv").set_index("method")
    assert table.loc["kd", "teacher_views_mean_max_prob"] == pytest.approx(0.85)
    assert table.loc["kd", "test_kl_teacher_student"] == pytest.approx(0.3)
    assert np.isnan(table.loc["kd", "ev3_confidently_wrong"])
    assert table.loc["ev3", "ev3_confidently_wrong"] == pytest.approx((0.3 + 0.6) / 2)
    ev3_table = pd.read_csv(tmp_path / "tables" / "ev3.csv").set_index("method")
    assert list(ev3_table.index) == ["ev3"]
    assert ev3_table.loc["ev3", "final_mean"] == pytest.approx(0.45)
    assert ev3_table.loc["ev3", "selected_mean"] == pytest.approx(0.55)
    assert ev3_table.loc["ev3", "confidently_wrong_first"] == pytest.approx(0.15)
    assert ev3_table.loc["ev3", "confidently_wrong_last"] == pytest.approx(0.45)
    assert "0.850" in (tmp_path / "tables" / "fidelity.md").read_text()
