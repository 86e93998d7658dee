"""Matplotlib figures (Agg backend), one color per method everywhere (by :func:`method_order`)."""

from __future__ import annotations

import io as _io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ev3 import io  # noqa: E402


def colors(order: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(order)}


def _save(fig, path: str) -> None:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with io._atomic(path, "wb") as f:
        f.write(buf.getvalue())


def _panels(groups):
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    return fig, axes[0]


def accuracy(runs: pd.DataFrame, summary: pd.DataFrame, order: list[str], path: str) -> None:
    """Per (dataset, student): seeds as dots, mean bar with 95 % CI whiskers, teacher as a dashed line."""
    groups = list(summary.groupby(["dataset", "student"], sort=False))
    fig, axes = _panels(groups)
    color = colors(order)
    for ax, ((dataset, student), s) in zip(axes, groups):
        methods = [m for m in order if m in set(s["method"])]
        for i, m in enumerate(methods):
            r = s[s["method"] == m].iloc[0]
            seeds = runs[(runs.dataset == dataset) & (runs.student == student) & (runs.method == m)]["test_accuracy"]
            ax.bar(i, 100 * r.test_acc_mean, color=color[m], alpha=0.6)
            if np.isfinite(r.test_acc_ci_low):
                ax.errorbar(i, 100 * r.test_acc_mean, yerr=[[100 * (r.test_acc_mean - r.test_acc_ci_low)], [100 * (r.test_acc_ci_high - r.test_acc_mean)]], color="k", capsize=4)
            ax.scatter(np.full(len(seeds), i) + np.linspace(-0.15, 0.15, len(seeds)), 100 * seeds, color="k", s=10, zorder=3)
        ax.axhline(100 * s["teacher_test_acc"].iloc[0], color="gray", ls="--", label="teacher")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        lo = 100 * min(s["test_acc_ci_low"].min(skipna=True) if s["test_acc_ci_low"].notna().any() else s["test_acc_mean"].min(), s["test_acc_mean"].min())
        ax.set_ylim(max(0, lo - 5), min(100, 100 * max(s["teacher_test_acc"].max(), s["test_acc_ci_high"].max(skipna=True) if s["test_acc_ci_high"].notna().any() else 0) + 3))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} · {student}")
        ax.legend(loc="lower right")
    _save(fig, path)


def curves(all_metrics: list[dict], order: list[str], path: str) -> None:
    """Val accuracy vs student steps: mean over seeds with a min–max band, per (dataset, student)."""
    keys = sorted({(m["dataset"], m["student"]) for m in all_metrics})
    fig, axes = _panels(keys)
    color = colors(order)
    for ax, (dataset, student) in zip(axes, keys):
        for method in order:
            hs = [m["history"] for m in all_metrics if (m["dataset"], m["student"], m["method"]) == (dataset, student, method)]
            if not hs:
                continue
            n = min(len(h) for h in hs)
            steps = np.array([e["student_steps"] for e in hs[0][:n]])
            acc = 100 * np.array([[e["val_accuracy"] for e in h[:n]] for h in hs])
            ax.plot(steps, acc.mean(0), color=color[method], label=f"{method} (n={len(hs)})")
            ax.fill_between(steps, acc.min(0), acc.max(0), color=color[method], alpha=0.2)
        ax.set_xlabel("student steps")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title(f"{dataset} · {student}")
        ax.legend(loc="lower right")
    _save(fig, path)
