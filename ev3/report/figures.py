"""Matplotlib figures (Agg backend), one color per method everywhere (by ``aggregate.method_order``).

Accuracies are plotted in percent. PNGs carry no timestamp or software metadata (same bytes on a rerun).
"""

from __future__ import annotations

import io as _io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects, ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402

from ev3 import io  # noqa: E402
from ev3.report import OPTIONAL_FIGURES  # noqa: E402
from ev3.report.compute import interp_within, series  # noqa: E402


SAMPLE_RUNS = 20
"""Default ``K``: per method, runs drawn one by one in the figures that would otherwise draw every run."""

BAND = (0.1, 0.9)
"""Quantiles (over runs) of the band drawn for a method with more than ``K`` runs."""


def colors(order: list[str]) -> dict[str, tuple]:
    """The tab10 color of each method, by its position in ``order``."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(order)}


def _save(fig, path: str) -> None:
    """Write ``fig`` as PNG atomically, without metadata that would change between runs."""
    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with io._atomic(path, "wb") as f:
        f.write(buf.getvalue())


def _panels(groups):
    """One panel per group (a dataset × student), side by side."""
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4), squeeze=False)
    return fig, axes[0]


def _groups(metrics: list[dict]) -> list[tuple[str, str]]:
    """The (dataset, student) pairs of the runs, sorted."""
    return sorted({(m["dataset"], m["student"]) for m in metrics})


def _entries(obj: dict, key: str) -> list[dict]:
    """The dict entries of the list ``obj[key]`` (missing or malformed: none)."""
    value = obj.get(key)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _number(value) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flops_axis(ax) -> None:
    """Log-scale FLOPs x axis labelled at 1, 2 and 5 × 10^k with SI prefixes (no crowded minor labels)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.EngFormatter())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _legend(ax) -> None:
    """A legend right of the panel (many methods would hide the data) with one entry per label."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def accuracy(runs: pd.DataFrame, summary: pd.DataFrame, order: list[str], path: str, k: int = SAMPLE_RUNS) -> None:
    """Per (dataset, student): seeds as dots (small and translucent beyond ``k`` seeds), mean bar with 95 % CI
    whiskers, teacher as a dashed line."""
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
            dots = {"s": 10} if len(seeds) <= k else {"s": 2, "alpha": 0.3}  # many seeds: a density, not dots
            ax.scatter(np.full(len(seeds), i) + np.linspace(-0.15, 0.15, len(seeds)), 100 * seeds, color="k", zorder=3, **dots)
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
    keys = _groups(all_metrics)
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
        _legend(ax)
    _save(fig, path)


MAX_GRID = 200
"""At most this many FLOPs points per method in ``accuracy_vs_flops`` (the union of the runs' evaluation FLOPs,
thinned beyond)."""


def _mean_t_band(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``acc`` (runs × points, no NaN): mean and 95 % t-interval over runs, as
    :func:`ev3.stats.mean_ci` per column (``low = high = NaN`` for one run), in one pass."""
    n = acc.shape[0]
    mean = acc.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    half = scipy.stats.t.ppf(0.975, n - 1) * acc.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def accuracy_vs_flops(all_metrics: list[dict], order: list[str], path: str) -> None:
    """Test accuracy (state at each evaluation) vs cumulative FLOPs, log x: per method the mean over seeds with
    a 95 % t-band, each run interpolated onto the union of the method's evaluation FLOPs within the range every
    seed covers (no extrapolation)."""
    keys = _groups(all_metrics)
    fig, axes = _panels(keys)
    color = colors(order)
    for ax, key in zip(axes, keys):
        for method in order:
            hs = [m["history"] for m in all_metrics if (m["dataset"], m["student"], m["method"]) == (*key, method)]
            if not hs:
                continue
            grid = np.unique(np.concatenate([series(h, "flops") for h in hs]))
            acc = np.stack([interp_within(grid, series(h, "flops"), series(h, "test_accuracy")) for h in hs])
            covered = ~np.isnan(acc).any(axis=0)  # the mean is always over every seed
            grid, acc = grid[covered], acc[:, covered]
            if grid.size > MAX_GRID:  # many runs at distinct FLOPs: thin the union to evenly ranked points
                pick = np.unique(np.round(np.linspace(0, grid.size - 1, MAX_GRID)).astype(int))
                grid, acc = grid[pick], acc[:, pick]
            mean, low, high = (100 * v for v in _mean_t_band(acc))
            ax.plot(grid, mean, color=color[method], marker=".", label=f"{method} (n={len(hs)})")
            ax.fill_between(grid, low, high, color=color[method], alpha=0.2)
        _flops_axis(ax)
        ax.set_xlabel("cumulative FLOPs (student + teacher + selection)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{key[0]} · {key[1]}")
        _legend(ax)
    _save(fig, path)


def agreement(runs: pd.DataFrame, order: list[str], path: str, k: int = SAMPLE_RUNS) -> None:
    """Teacher agreement vs test accuracy of the val-selected student: one point per run, colored by method
    (small and translucent for a method with more than ``k`` runs)."""
    groups = list(runs.groupby(["dataset", "student"], sort=True))
    fig, axes = _panels(groups)
    color = colors(order)
    for ax, ((dataset, student), g) in zip(axes, groups):
        for method in (m for m in order if m in set(g["method"])):
            r = g[g["method"] == method]
            dots = {"s": 25} if len(r) <= k else {"s": 4, "alpha": 0.3}
            ax.scatter(100 * r["teacher_agreement"], 100 * r["test_accuracy"], color=color[method], label=method, **dots)
        ax.set_xlabel("teacher agreement on test (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} · {student}")
        _legend(ax)
    _save(fig, path)


def _at_flops(entry: dict, history: list[dict]) -> float:
    """An event's x position: its ``flops``, else its ``student_steps`` mapped onto the run's cumulative FLOPs
    (linear, from 0 FLOPs at step 0), else NaN."""
    if _number(entry.get("flops")):
        return float(entry["flops"])
    if _number(entry.get("student_steps")):
        steps, flops = np.r_[0.0, series(history, "student_steps")], np.r_[0.0, series(history, "flops")]
        return float(np.interp(entry["student_steps"], steps, flops))
    return float("nan")


def _accuracy_at(entry: dict, x: float, history: list[dict]) -> float:
    """An event's accuracy (fraction): its own ``test_accuracy``/``val_accuracy``/``accuracy``, else the run's
    test accuracy interpolated at ``x``."""
    for key in ("test_accuracy", "val_accuracy", "accuracy"):
        if _number(entry.get(key)):
            return float(entry[key])
    return float(np.interp(x, series(history, "flops"), series(history, "test_accuracy")))


def sample(runs: list[dict], k: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """(the runs drawn one by one: per method those with the ``k`` smallest seeds, in ``runs`` order; every run
    of each method with more than ``k`` runs, by method). The same seeds are drawn for every method, so drawn
    runs pair across methods."""
    by_method: dict[str, list[dict]] = {}
    for m in runs:
        by_method.setdefault(m["method"], []).append(m)
    drawn = set()
    for group in by_method.values():
        drawn |= {id(m) for m in sorted(group, key=lambda m: m["seed"])[:k]}
    return [m for m in runs if id(m) in drawn], {name: g for name, g in by_method.items() if len(g) > k}


def _band(ax, xy: list[tuple[np.ndarray, np.ndarray]], color, label: str, *, log: bool) -> None:
    """Median (line) and :data:`BAND` quantiles (shaded) over runs of ``y(x)`` (one ``(x, y)`` pair per run,
    ``x`` increasing) at 100 points spanning every run's ``x`` (log-spaced if ``log``); each run linearly
    interpolated within its own range (no extrapolation), a point's statistics over the runs covering it."""
    xy = [(x, y) for x, y in xy if x.size]
    if not xy:
        return
    lo, hi = min(x[0] for x, _ in xy), max(x[-1] for x, _ in xy)
    grid = np.geomspace(lo, hi, 100) if log and lo > 0 else np.linspace(lo, hi, 100)
    ys = np.stack([interp_within(grid, x, y) for x, y in xy])
    keep = np.isfinite(ys).any(axis=0)
    q = np.nanquantile(ys[:, keep], [0.5, *BAND], axis=0)
    ax.plot(grid[keep], q[0], color=color, lw=2, label=label, zorder=4, path_effects=[_OUTLINE])  # above markers
    ax.fill_between(grid[keep], q[1], q[2], color=color, alpha=0.2)


_OUTLINE = patheffects.withStroke(linewidth=3.5, foreground="k")
"""A dark edge that keeps a median line visible over the drawn runs of its own color."""


def _band_label(method: str, n: int, k: int) -> str:
    return f"{method}: median, {100 * BAND[0]:g}–{100 * BAND[1]:g} % of {n} runs ({k} shown)"


EV3_MARKERS = {"accepted": ("^", "θ took the candidate"), "rolled_back": ("v", "θ rolled back to θ_s"),
               "kept": ("x", "θ kept")}


def _ev3_outcome(decision: dict) -> str | None:
    """``accepted`` / ``rolled_back`` / ``kept`` for a decided round; None for a growth round."""
    if decision.get("grew"):
        return None
    return "accepted" if decision.get("accepted") else "rolled_back" if decision.get("rolled_back") else "kept"


def ev3_trajectory(all_metrics: list[dict], order: list[str], path: str, k: int = SAMPLE_RUNS) -> None:
    """Runs with an ``ev3`` object: test accuracy of θ (the reported current model, solid) and of θ_s
    (``ev3.trajectory`` ``stable_test_accuracy``, dashed) vs cumulative FLOPs per run; each decided round of
    ``ev3.decisions`` as ▲ (θ took the candidate), ▼ (θ rolled back to θ_s) or ✕ (θ kept), on θ's line;
    ``ev3.growth_events`` as dotted vertical lines. Per method at most ``k`` runs (see :func:`sample`) are drawn
    so; a method with more runs also gets the median and :data:`BAND` band of θ over all its runs (thick line,
    shaded), so the figure's artists do not grow beyond ``k`` runs per method."""
    runs = [m for m in all_metrics if "ev3" in m]
    keys = _groups(runs)
    fig, axes = _panels(keys)
    color = colors(order)
    for ax, key in zip(axes, keys):
        drawn, banded = sample([m for m in runs if (m["dataset"], m["student"]) == key], k)
        points = {}  # (method, outcome) -> [(x, accuracy %)]: one scatter each
        for m in drawn:
            h, c = m["history"], color[m["method"]]
            ax.plot(series(h, "flops"), 100 * series(h, "test_accuracy"), color=c, alpha=0.7, label=m["method"])
            stable = [e for e in _entries(m["ev3"], "trajectory") if _number(e.get("flops")) and _number(e.get("stable_test_accuracy"))]
            if stable:
                ax.plot([e["flops"] for e in stable], [100 * e["stable_test_accuracy"] for e in stable], color=c, ls="--", alpha=0.5)
            for d in _entries(m["ev3"], "decisions"):
                outcome = _ev3_outcome(d)
                if outcome is not None:
                    x = _at_flops(d, h)
                    points.setdefault((m["method"], outcome), []).append((x, 100 * _accuracy_at(d, x, h)))
            for event in _entries(m["ev3"], "growth_events"):
                ax.axvline(_at_flops(event, h), color=c, ls=":", alpha=0.6)
        for (method, outcome), xy in points.items():
            ax.scatter(*np.array(xy).T, color=color[method], marker=EV3_MARKERS[outcome][0], s=40, zorder=3)
        for method in (o for o in order if o in banded):
            xy = [(series(m["history"], "flops"), 100 * series(m["history"], "test_accuracy")) for m in banded[method]]
            _band(ax, xy, color[method], _band_label(method, len(banded[method]), k), log=True)
        for marker, label in EV3_MARKERS.values():
            ax.scatter([], [], color="k", marker=marker, label=label)
        ax.plot([], [], color="k", ls="--", label="θ_s (stable)")
        ax.plot([], [], color="k", ls=":", label="growth event")
        _legend(ax)
        _flops_axis(ax)
        ax.set_xlabel("cumulative FLOPs")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{key[0]} · {key[1]} · EV3 (θ solid, θ_s dashed)")
    _save(fig, path)


def _teacher_series(runs: list[dict]) -> list[str]:
    """Numeric keys (other than ``student_steps``) of the runs' ``metadistil.teacher_history`` entries."""
    keys = {
        k for m in runs for entry in _entries(m["metadistil"], "teacher_history")
        for k, v in entry.items() if k != "student_steps" and _number(v)
    }
    return sorted(keys, key=lambda k: (k != "teacher_test_accuracy", k))


def metadistil_teacher(all_metrics: list[dict], order: list[str], path: str, k: int = SAMPLE_RUNS) -> None:
    """Runs with a ``metadistil`` object: each numeric series of ``metadistil.teacher_history`` (entries with
    ``student_steps``) vs student steps, one line per run colored by method; rows are dataset × student.
    Accuracy/agreement series are in percent; the initial teacher's test accuracy is a dashed line. Per method
    at most ``k`` runs are drawn (see :func:`sample`); a method with more runs also gets the median and
    :data:`BAND` band of all its runs."""
    runs = [m for m in all_metrics if "metadistil" in m]
    keys, names = _groups(runs), _teacher_series(runs) or ["(no teacher_history)"]
    fig, axes = plt.subplots(len(keys), len(names), figsize=(5 * len(names), 3.8 * len(keys)), squeeze=False)
    color = colors(order)

    def xy(m, name, scale):
        th = [e for e in _entries(m["metadistil"], "teacher_history") if _number(e.get(name)) and "student_steps" in e]
        return series(th, "student_steps"), scale * series(th, name)

    for row, key in zip(axes, keys):
        group = [m for m in runs if (m["dataset"], m["student"]) == key]
        drawn, banded = sample(group, k)
        for ax, name in zip(row, names):
            scale = 100 if ("accuracy" in name or "agreement" in name) else 1
            for m in drawn:
                ax.plot(*xy(m, name, scale), color=color[m["method"]], marker=".", alpha=0.7, label=m["method"])
            for method in (o for o in order if o in banded):
                _band(ax, [xy(m, name, scale) for m in banded[method]], color[method],
                      _band_label(method, len(banded[method]), k), log=False)
            if name == "teacher_test_accuracy":
                ax.axhline(100 * group[0]["teacher_test_accuracy"], color="gray", ls="--", label="initial teacher")
            _legend(ax)
            ax.set_xlabel("student steps")
            ax.set_ylabel("%" if scale == 100 else "value")
            ax.set_title(f"{name}\n{key[0]} · {key[1]}", fontsize=10)
    _save(fig, path)


def draw_all(runs: pd.DataFrame, summary: pd.DataFrame, all_metrics: list[dict], order: list[str], figures_dir: str,
             k: int = SAMPLE_RUNS) -> None:
    """Every figure into ``figures_dir``; the :data:`OPTIONAL_FIGURES` only when some run has their object.
    Figures that draw runs one by one draw at most ``k`` per method (:func:`sample`)."""
    accuracy(runs, summary, order, os.path.join(figures_dir, "accuracy.png"), k)
    curves(all_metrics, order, os.path.join(figures_dir, "curves.png"))
    accuracy_vs_flops(all_metrics, order, os.path.join(figures_dir, "accuracy_vs_flops.png"))
    agreement(runs, order, os.path.join(figures_dir, "agreement.png"), k)
    draw = {"ev3_trajectory": ev3_trajectory, "metadistil_teacher": metadistil_teacher}
    for name, key in OPTIONAL_FIGURES.items():
        if any(key in m for m in all_metrics):
            draw[name](all_metrics, order, os.path.join(figures_dir, f"{name}.png"), k)
