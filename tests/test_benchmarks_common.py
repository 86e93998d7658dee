"""Benchmark ratios combine figures of one machine only: rows carry a fingerprint, peaks are looked up by it."""

import json
import subprocess

import pytest

from benchmarks import common


def _peak_row(setting, flops, fingerprint):
    return json.dumps({"benchmark": "peak", "setting": setting, "peak_flops_per_s": flops, "fingerprint": fingerprint})


def test_fingerprint_names_the_cpu_its_isa_and_xla_s_isa_cap(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=AVX")
    fp = common.machine_fingerprint()
    assert fp["cpu"] and fp["cores"] >= 1 and set(fp["isa"]) <= set(common.ISA_FLAGS) and fp["xla_max_isa"] == "AVX"
    monkeypatch.delenv("XLA_FLAGS")
    assert common.machine_fingerprint()["xla_max_isa"] is None


def test_a_peak_from_another_machine_is_never_used(tmp_path, monkeypatch):
    here = common.machine_fingerprint()
    other = {**here, "cpu": here["cpu"] + " (another)"}
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join([
        _peak_row("core", 1.0, here), _peak_row("core", 9.0, other),  # newest row of another machine
        json.dumps({"benchmark": "peak", "setting": "core", "peak_flops_per_s": 7.0}),  # no fingerprint: unknown
    ]) + "\n")
    monkeypatch.setattr(common, "RESULTS", str(results))
    assert common.latest_peak("core") == 1.0
    assert common.latest_peak("default") is None

    measured = []

    def fake_peak_py(cmd, check):  # stands in for benchmarks/peak.py, which records a row of this machine
        measured.append(cmd[-1])
        with open(results, "a") as f:
            f.write(_peak_row(cmd[-1], 2.0, common.machine_fingerprint()) + "\n")

    monkeypatch.setattr(subprocess, "run", fake_peak_py)
    assert common.machine_peak("core") == 1.0 and measured == []  # recorded here: not measured again
    assert common.machine_peak("default") == 2.0 and measured == ["default"]

    monkeypatch.setattr(subprocess, "run", lambda cmd, check: None)  # a peak.py that records nothing
    with pytest.raises(RuntimeError, match="no 'flags' peak for this machine"):
        common.machine_peak("flags")
