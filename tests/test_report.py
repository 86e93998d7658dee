"""The report's tables and figures on small synthetic benchmarks (metrics.json + predictions.npz in tmp_path)."""

import json
import os
import re

import jsonschema
import numpy as np
import pandas as pd
import pytest

from ev3 import io, stats
from ev3.report import aggregate as agg
from ev3.report.compute import interp_within

N_TEST = 200  # test samples per run: an accuracy is k / 200
T_975_2 = 4.302652729749464  # t_{0.975, 2} from tables
LABELS = np.arange(N_TEST) % 10


def history(flops=(100.0, 200.0, 300.0, 400.0), steps=(10, 20, 30, 40), test=(0.2, 0.4, 0.5, 0.6), val=None):
    """Per-evaluation history entries (schema fields) from parallel sequences."""
    val = test if val is None else val
    return [
        {"student_steps": s, "flops": f, "wall_s": 0.1 * s, "train_loss": 1.0, "val_accuracy": v, "test_accuracy": t}
        for s, f, t, v in zip(steps, flops, test, val)
    ]


def write_run(root, method, seed, correct, *, dataset="mnist1d", student="mlp", hist=None, flops=400.0, **extra):
    """One schema-valid student run: ``correct`` (bool, N_TEST) sets predictions and test accuracy."""
    correct = np.asarray(correct, bool)
    acc = float(correct.mean())
    hist = hist or history()
    metrics = {
        "benchmark": "synthetic", "dataset": dataset, "student": student, "teacher": "cnn", "method": method,
        "method_type": method, "seed": seed, "teacher_seed": 0, "split_seed": 0,
        "test_accuracy": acc, "final_test_accuracy": acc, "val_accuracy": acc, "test_nll": 1.0,
        "teacher_agreement": acc, "teacher_test_accuracy": 0.9, "student_params": 1000, "history": hist,
        "test_kl_teacher_student": 0.5, "teacher_views": {"samples": 1024, "augmented": True, "mixup": False,
                                                          "mean_max_prob": 0.9, "mean_entropy": 0.3,
                                                          "confident_fraction": 0.5},
        "compute": {
            "student_steps": hist[-1]["student_steps"], "teacher_forwards": 0, "teacher_backwards": 0,
            "flops_student": flops, "flops_teacher": 0.0, "flops_selection": 0.0, "flops": flops, "wall_s": 2.0,
            "compile_s": 1.0, "compiles": 3, "steps_per_s": None, "peak_memory_bytes": None,
        },
        "versions": {"python": "3.11", "jax": "0", "jaxlib": "0", "flax": "0", "optax": "0", "device_kind": "cpu"},
        **extra,
    }
    with open(agg.METRICS_SCHEMA) as f:
        jsonschema.validate(metrics, json.load(f))
    run_dir = os.path.join(root, "runs", dataset, student, method, f"seed{seed}")
    io.write_npz(os.path.join(run_dir, "predictions.npz"), pred=np.where(correct, LABELS, (LABELS + 1) % 10),
                 label=LABELS, prob=np.full((N_TEST, 10), 0.1, np.float32))
    io.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return os.path.join(run_dir, "metrics.json")


def first(k):
    """Correct on the first ``k`` test samples."""
    return np.arange(N_TEST) < k


KD_CORRECT = {0: 100, 1: 110, 2: 120}  # kd accuracies 0.50, 0.55, 0.60
GAIN = {0: 10, 1: 12, 2: 11}  # "better" gets 10–12 more samples right than kd on every seed
SCRATCH_CORRECT = {0: 98, 1: 114, 2: 116}  # scratch − kd: −1 %, +2 %, −2 %: no consistent difference


def planted_benchmark(root, seeds=(0, 1, 2)):
    for s in seeds:
        write_run(root, "kd", s, first(KD_CORRECT[s]))
        write_run(root, "better", s, first(KD_CORRECT[s] + GAIN[s]))
        write_run(root, "scratch", s, first(SCRATCH_CORRECT[s]))
    return agg.aggregate(str(root))


def read(root, name):
    return pd.read_csv(os.path.join(root, "tables", name))


# ---- summary -----------------------------------------------------------------------------------------------


def test_summary_mean_and_ci_match_hand_computed_values(tmp_path):
    planted_benchmark(tmp_path)
    summary = read(tmp_path, "summary.csv")
    assert list(summary["method"]) == ["scratch", "kd", "better"]  # baselines first, then alphabetical
    kd = summary[summary["method"] == "kd"].iloc[0]
    half = T_975_2 * 0.05 / np.sqrt(3)  # accuracies 0.50, 0.55, 0.60: mean 0.55, sd 0.05
    assert kd["n_seeds"] == 3 and kd["test_acc_mean"] == pytest.approx(0.55, abs=1e-6)
    assert kd["test_acc_ci_low"] == pytest.approx(0.55 - half, abs=1e-6)
    assert kd["test_acc_ci_high"] == pytest.approx(0.55 + half, abs=1e-6)
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert f"55.0 ({100 * (0.55 - half):.1f}–{100 * (0.55 + half):.1f})" in md


def test_a_planted_run_shows_up_in_every_table(tmp_path):
    write_run(tmp_path, "kd", 0, first(100))
    write_run(tmp_path, "kd", 7, first(100))
    write_run(tmp_path, "planted", 7, first(175), flops=1.234567e9)  # test accuracy 0.875
    agg.aggregate(str(tmp_path))
    summary = read(tmp_path, "summary.csv").set_index("method")
    assert summary.loc["planted", "test_acc_mean"] == 0.875 and summary.loc["planted", "n_seeds"] == 1
    assert np.isnan(summary.loc["planted", "test_acc_ci_low"])  # one seed: no interval
    assert "| planted " in (tmp_path / "tables" / "summary.md").read_text()
    assert "87.5" in (tmp_path / "tables" / "summary.md").read_text()
    runs = read(tmp_path, "runs.csv").set_index("method")
    assert runs.loc["planted", "seed"] == 7 and runs.loc["planted", "run_dir"] == "runs/mnist1d/mlp/planted/seed7"
    assert read(tmp_path, "compute.csv").set_index("method").loc["planted", "flops"] == pytest.approx(1.234567e9, rel=1e-5)
    assert "1.2" in (tmp_path / "tables" / "compute.md").read_text()  # GFLOPs
    tests = read(tmp_path, "significance.csv").set_index(["method", "baseline"])
    assert tests.loc[("planted", "kd"), "diff_mean"] == pytest.approx(0.375)
    assert tests.loc[("planted", "kd"), "b10"] == 75 and tests.loc[("planted", "kd"), "b01"] == 0
    assert tests.loc[("planted", "kd"), "label_seeds"] == stats.NOT_TESTED


# ---- significance ------------------------------------------------------------------------------------------


def test_a_consistent_gain_over_kd_is_significant_with_three_seeds(tmp_path):
    planted_benchmark(tmp_path)
    tests = read(tmp_path, "significance.csv").set_index(["method", "baseline"])
    better = tests.loc[("better", "kd")]
    d = np.array([GAIN[s] for s in range(3)]) / N_TEST
    assert better["n_seeds"] == 3
    assert better["diff_mean"] == pytest.approx(d.mean(), abs=1e-6)
    assert better["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-4)
    assert better["b10"] == sum(GAIN.values()) and better["b01"] == 0
    assert better["p_seeds_holm"] < 0.05 and better["label_seeds"] == "significant"
    assert better["label_samples"] == "significant"
    assert tests.loc[("scratch", "kd"), "label_seeds"] == "n.s."
    assert set(tests.index) == {("better", "kd"), ("scratch", "kd"), ("kd", "scratch"), ("better", "scratch")}
    md = (tmp_path / "tables" / "significance.md").read_text()
    assert re.search(r"\| better +\| kd +\| +3 \| +\+5\.5 \(\+4\.3 to \+6\.7\) \|.*\| significant +\|", md)


def test_two_seeds_are_never_called_significant(tmp_path):
    planted_benchmark(tmp_path, seeds=(0, 1))
    tests = read(tmp_path, "significance.csv")
    assert (tests["n_seeds"] == 2).all()
    assert (tests["label_seeds"] == "n<3: not tested").all() and (tests["label_samples"] == "n<3: not tested").all()
    better = tests[(tests["method"] == "better") & (tests["baseline"] == "kd")].iloc[0]
    assert better["p_samples"] < 0.05  # the p-value exists, the verdict is still withheld
    assert "n<3: not tested" in (tmp_path / "tables" / "significance.md").read_text()


def test_holm_adjusted_p_values_are_holm_of_the_raw_ones_per_family(tmp_path):
    planted_benchmark(tmp_path)
    tests = read(tmp_path, "significance.csv")
    for _, family in tests.groupby(["dataset", "student", "baseline"]):
        for test in ("seeds", "samples"):
            np.testing.assert_allclose(family[f"p_{test}_holm"], stats.holm(family[f"p_{test}"]), rtol=1e-5)
    vs_kd = tests[tests["baseline"] == "kd"]
    assert len(vs_kd) == 2 and (vs_kd["p_seeds_holm"] > vs_kd["p_seeds"]).any()  # two methods: Holm bites


def test_runs_pair_by_seed_not_by_position(tmp_path):
    """Seed 3 of kd has no partner; the other seeds pair with the same seed of the method."""
    for s in (0, 1, 2):
        write_run(tmp_path, "kd", s, first(KD_CORRECT[s]))
        write_run(tmp_path, "better", s, first(KD_CORRECT[s] + GAIN[s]))
    write_run(tmp_path, "kd", 3, first(10))
    agg.aggregate(str(tmp_path))
    better = read(tmp_path, "significance.csv").iloc[0]
    assert better["n_seeds"] == 3 and better["diff_mean"] == pytest.approx(11 / N_TEST)


# ---- equal compute -----------------------------------------------------------------------------------------


def test_interpolation_never_extrapolates():
    out = interp_within([50, 100, 150, 400, 401], [100, 200, 400], [0.2, 0.4, 0.8])
    np.testing.assert_allclose(out, [np.nan, 0.2, 0.3, 0.8, np.nan])


def test_matched_compute_table_matches_hand_interpolation(tmp_path):
    """cheap: evals at 120…480 FLOPs; dear: 200…800 FLOPs. Smallest final FLOPs 480 → budgets 60, 120, 240, 480."""
    cheap = history(flops=(120, 240, 360, 480), test=(0.2, 0.4, 0.5, 0.6))
    dear = [history(flops=(200, 400, 600, 800), test=(0.3 + e, 0.5 + e, 0.6 + e, 0.7 + e)) for e in (0.0, 0.02)]
    write_run(tmp_path, "kd", 0, first(100), hist=cheap)
    for seed, h in enumerate(dear):
        write_run(tmp_path, "dear", seed, first(100), hist=h)
    agg.aggregate(str(tmp_path))
    table = read(tmp_path, "matched_compute.csv").set_index(["axis", "fraction", "method"])
    expected_flops = {  # fraction: (kd, dear mean over seeds 0.01 above seed 0)
        0.125: (np.nan, np.nan),  # 60: before everyone's first evaluation
        0.25: (0.2, np.nan),  # 120: dear's first evaluation is at 200
        0.5: (0.4, 0.3 + 0.2 * 40 / 200 + 0.01),  # 240
        1.0: (0.6, 0.5 + 0.1 * 80 / 200 + 0.01),  # 480
    }
    for fraction, (kd, dear_acc) in expected_flops.items():
        np.testing.assert_allclose(table.loc[("flops", fraction, "kd"), "test_acc_mean"], kd, atol=1e-6)
        np.testing.assert_allclose(table.loc[("flops", fraction, "dear"), "test_acc_mean"], dear_acc, atol=1e-6)
        assert table.loc[("flops", fraction, "kd"), "budget"] == pytest.approx(480 * fraction)
    assert table.loc[("flops", 1.0, "dear"), "n_seeds"] == 2 and table.loc[("flops", 0.25, "dear"), "n_seeds"] == 0
    # steps: both evaluate at 10…40 steps → budgets 5 (nobody), 10, 20, 40
    np.testing.assert_allclose(table.loc[("student_steps", 0.5, "dear"), "test_acc_mean"], 0.51, atol=1e-6)
    assert np.isnan(table.loc[("student_steps", 0.125, "kd"), "test_acc_mean"])
    assert "– [0]" in (tmp_path / "tables" / "matched_compute.md").read_text()


def test_compute_table_averages_counters_over_seeds(tmp_path):
    write_run(tmp_path, "kd", 0, first(100), flops=100.0)
    write_run(tmp_path, "kd", 1, first(100), flops=300.0)
    agg.aggregate(str(tmp_path))
    row = read(tmp_path, "compute.csv").iloc[0]
    assert row["n_seeds"] == 2 and row["flops"] == 200.0 and row["student_steps"] == 40
    assert np.isnan(row["steps_per_s"])  # null in every run


# ---- refusal, determinism, figures -------------------------------------------------------------------------


def test_aggregate_refuses_a_schema_invalid_metrics_file_and_names_it(tmp_path):
    write_run(tmp_path, "kd", 0, first(100))
    bad = write_run(tmp_path, "kd", 1, first(100))
    metrics = io.read_json(bad)
    metrics["test_accuracy"] = 1.5
    io.write_json(bad, metrics)
    with pytest.raises(ValueError, match=re.escape(bad)):
        agg.aggregate(str(tmp_path))


def test_aggregate_refuses_predictions_that_contradict_the_metrics(tmp_path):
    path = write_run(tmp_path, "kd", 0, first(100))
    npz = os.path.join(os.path.dirname(path), "predictions.npz")
    io.write_npz(npz, pred=LABELS, label=LABELS, prob=np.full((N_TEST, 10), 0.1, np.float32))  # 100 % ≠ 50 %
    with pytest.raises(ValueError, match=re.escape(npz)):
        agg.aggregate(str(tmp_path))


def test_tables_and_figures_regenerate_to_the_same_bytes(tmp_path):
    planted_benchmark(tmp_path)
    outputs = sorted(p for d in ("tables", "figures") for p in (tmp_path / d).iterdir())
    before = {p.name: p.read_bytes() for p in outputs}
    for p in outputs:
        p.unlink()
    agg.aggregate(str(tmp_path))
    assert before == {p.name: p.read_bytes() for d in ("tables", "figures") for p in (tmp_path / d).iterdir()}
    assert {"summary.csv", "significance.csv", "significance.md", "compute.csv", "matched_compute.csv", "runs.csv",
            "report.rst", "accuracy.png", "curves.png", "accuracy_vs_flops.png", "agreement.png"} <= set(before)


def test_optional_figures_exist_only_for_runs_that_carry_their_object(tmp_path):
    write_run(tmp_path, "kd", 0, first(100))
    agg.aggregate(str(tmp_path))
    assert not (tmp_path / "figures" / "ev3_trajectory.png").exists()
    assert not (tmp_path / "figures" / "metadistil_teacher.png").exists()
    ev3 = {"decisions": [{"student_steps": 20, "accepted": True}, {"flops": 300.0, "accepted": False, "val_accuracy": 0.45},
                         "malformed"], "growth_events": [{"student_steps": 30}]}
    meta = {"teacher_history": [{"student_steps": s, "teacher_test_accuracy": 0.9 - 0.01 * i, "teacher_agreement_with_initial": 1 - 0.02 * i}
                                for i, s in enumerate((10, 20, 30, 40))]}
    write_run(tmp_path, "ev3", 0, first(120), ev3=ev3)
    write_run(tmp_path, "metadistil", 0, first(110), metadistil=meta)
    write_run(tmp_path, "metadistil", 1, first(110), metadistil={})  # no history: skipped, not an error
    agg.aggregate(str(tmp_path))
    for name in ("ev3_trajectory.png", "metadistil_teacher.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_page_lists_the_displayed_tables_as_rst(tmp_path):
    planted_benchmark(tmp_path)
    page = (tmp_path / "tables" / "report.rst").read_text()
    assert page.count(".. rubric::") == len(agg.DISPLAYED)
    for name, _ in agg.DISPLAYED:
        header = (tmp_path / "tables" / f"{name}.md").read_text().splitlines()[0]
        assert all(cell.strip() in page for cell in header.strip("|").split("|"))
    from docutils.core import publish_parts

    html = publish_parts(page, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})["body"]
    assert html.count("<table") == len(agg.DISPLAYED)


def test_published_anchors_sit_beside_our_accuracy():
    import pandas as pd

    from ev3.report.aggregate import add_anchors, summary_display

    summary = pd.DataFrame({"dataset": ["c"] * 2, "student": ["resnet20", "resnet20"], "method": ["kd", "ev3"],
                            "n_seeds": [3, 3], "test_acc_mean": [0.7, 0.71], "test_acc_ci_low": [0.69, 0.7],
                            "test_acc_ci_high": [0.71, 0.72], "teacher_agreement": [0.8, 0.8],
                            "teacher_test_acc": [0.72, 0.72], "flops": [1e9, 1e9], "wall_s": [1.0, 1.0], "steps_per_s": [1.0, 1.0]})
    anchored = add_anchors(summary, {"resnet20": {"teacher": 72.34, "kd": 70.66}})
    assert anchored["published_test_acc"].iloc[0] == pytest.approx(0.7066) and np.isnan(anchored["published_test_acc"].iloc[1])
    assert anchored["published_teacher_acc"].tolist() == pytest.approx([0.7234, 0.7234])
    shown = summary_display(anchored)
    assert shown["published %"].tolist() == ["70.7", "–"] and shown["published teacher %"].tolist() == ["72.3", "72.3"]
    assert "published %" not in summary_display(add_anchors(summary, {}))  # no anchors, no columns
