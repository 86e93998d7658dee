"""One GPU per job (``ev3.devices``), checked on CPU with fake device lists: concurrent claimers never share a
device, a SIGKILLed holder's device is free again, CUDA_VISIBLE_DEVICES bounds the devices, claiming is off
under SLURM and for CPU runs, and ``python -m ev3 train`` claims before JAX is imported."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ev3 import devices
from ev3.config import ConfigError, RunSpec, student_run, teacher_run, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_devices_come_from_cuda_visible_devices_else_from_gpus():
    assert devices.candidate_devices(4, {}) == ["0", "1", "2", "3"]
    assert devices.candidate_devices(None, {}) is None and devices.candidate_devices(0, {}) is None
    assert devices.candidate_devices(8, {"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]  # the environment bounds it
    assert devices.candidate_devices(None, {"CUDA_VISIBLE_DEVICES": "GPU-a1, GPU-b2"}) == ["GPU-a1", "GPU-b2"]
    assert devices.candidate_devices(4, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.candidate_devices(4, {"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_claiming_sets_the_one_visible_device_and_is_off_for_cpu_slurm_and_no_count(tmp_path):
    env = {}
    first = devices.claim_for_job("gpu", 2, str(tmp_path), env=env, log=lambda s: None)
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert first.path == os.path.join(str(tmp_path), socket.gethostname(), "0.lock")
    second_env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}  # a user's setting is kept
    second = devices.claim_for_job("gpu", 2, str(tmp_path), env=second_env, log=lambda s: None)
    assert second_env == {"CUDA_VISIBLE_DEVICES": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
    assert devices.try_claim(os.path.dirname(first.path), ["0", "1"]) is None  # both held
    first.release()
    again = devices.try_claim(os.path.dirname(first.path), ["0", "1"])
    assert again.device == "0"
    again.release(), second.release()

    for device, gpus, env in [
        ("cpu", 4, {}),
        ("gpu", 4, {"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "3"}),  # SLURM assigned the GPU
        ("gpu", None, {}),  # no count: the job sees what it sees
        ("gpu", 4, {"CUDA_VISIBLE_DEVICES": ""}),  # nothing visible
    ]:
        before = dict(env)
        assert devices.claim_for_job(device, gpus, str(tmp_path / "off"), env=env, log=lambda s: None) is None
        assert env == before
    assert not (tmp_path / "off").exists()
    # CUDA_VISIBLE_DEVICES lists the GPUs (gpus is then ignored): the jobs get 5, then 7.
    envs = [{"CUDA_VISIBLE_DEVICES": "5,7"} for _ in range(2)]
    claims = [devices.claim_for_job("gpu", 8, str(tmp_path / "cvd"), env=e, log=lambda s: None) for e in envs]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["5", "7"]
    assert devices.try_claim(os.path.dirname(claims[0].path), ["5", "7"]) is None
    for c in claims:
        c.release()
    # SLURM without a GPU assignment: the job claims from gpus (locks are per host).
    env = {"SLURM_JOB_ID": "17"}
    claim = devices.claim_for_job("gpu", 2, str(tmp_path), env=env, log=lambda s: None)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    claim.release()


CLAIMER = """
    import json, sys, time
    from ev3 import devices
    lock_dir, start, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    while time.time() < start:  # all claimers start together
        time.sleep(0.001)
    lines = []
    c = devices.claim(lock_dir, sys.argv[4].split(","), timeout_s=60, poll_s=0.02, log=lines.append)
    t0 = time.monotonic()
    time.sleep(hold)
    print(json.dumps({"device": c.device, "start": t0, "end": time.monotonic(), "waited": bool(lines)}))
"""


def test_concurrent_claimers_never_share_a_device(tmp_path):
    n, devs, hold = 8, ["0", "1", "2"], 0.4
    start = time.time() + 3.0  # after every interpreter has started
    procs = [python(CLAIMER, str(tmp_path), str(start), str(hold), ",".join(devs)) for _ in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout))
    assert {o["device"] for o in out} == set(devs)
    for d in devs:  # on each device, one holder after the other
        spans = sorted((o["start"], o["end"]) for o in out if o["device"] == d)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), (d, spans)
    # 8 claimers, 3 devices: at most 3 got one at once, the others logged and waited.
    assert sum(o["waited"] for o in out) >= n - len(devs)


HOLDER = """
    import sys, time
    from ev3 import devices
    c = devices.claim(sys.argv[1], ["0"], timeout_s=5)
    print("holding", c.device, flush=True)
    time.sleep(600)
"""


def test_a_killed_holders_device_is_free_again(tmp_path):
    holder = python(HOLDER, str(tmp_path), start_new_session=True)
    try:
        assert holder.stdout.readline().split() == ["holding", "0"]
        assert devices.try_claim(str(tmp_path), ["0"]) is None
        lines = []
        with pytest.raises(devices.NoFreeDeviceError, match="within 0.3 s"):
            devices.claim(str(tmp_path), ["0"], timeout_s=0.3, poll_s=0.05, log=lines.append)
        assert len(lines) == 1 and "waiting up to 0.3 s" in lines[0] and "--resources gpu=1" in lines[0]
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert holder.returncode == -signal.SIGKILL
        claim = devices.claim(str(tmp_path), ["0"], timeout_s=5, poll_s=0.05)  # the kernel dropped the flock
        assert claim.device == "0"
        claim.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()


def test_gpus_is_validated_and_travels_to_run_json(smoke_config):
    config = validate({**smoke_config, "device": "gpu", "gpus": 4})
    for run in (student_run(config, "mnist1d", config["students"][0], "kd", 0),
                teacher_run(config, "mnist1d", config["teacher"]["model"])):
        spec = RunSpec.from_dict(json.loads(json.dumps(run)))
        assert (spec.device, spec.gpus) == ("gpu", 4)
    spec = RunSpec.from_dict(student_run(validate(smoke_config), "mnist1d", smoke_config["students"][0], "kd", 0))
    assert (spec.device, spec.gpus) == ("cpu", None)
    for bad in (0, 1.5, "4"):
        with pytest.raises(ConfigError, match="^gpus"):
            validate({**smoke_config, "gpus": bad})


# `python -m ev3 train` with ev3.run replaced by a probe: what the run would see once it starts.
CLI = """
    import json, os, sys, types
    probe = types.ModuleType("ev3.run")
    def run(spec, out, state_dir=None):
        print(json.dumps({"jax_imported": "jax" in sys.modules, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                          "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}))
    probe.run = run
    sys.modules["ev3.run"] = probe
    from ev3.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def test_the_cli_claims_a_gpu_before_jax_is_imported(tmp_path, smoke_config):
    config = validate({**smoke_config, "device": "gpu", "gpus": 2})
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(student_run(config, "mnist1d", config["students"][0], "kd", 0)))
    unset = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "XLA_PYTHON_CLIENT_PREALLOCATE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    locks = tmp_path / "locks"
    held = devices.try_claim(str(locks / socket.gethostname()), ["0"])  # another job holds GPU 0
    try:
        p = python(CLI, "train", str(run_json), "--out", str(tmp_path / "out"), "--gpu-locks", str(locks), env=env)
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        assert "[gpu] claimed GPU 1 of 2" in stdout
        seen = json.loads(stdout.strip().splitlines()[-1])
        assert seen == {"jax_imported": False, "cuda": "1", "preallocate": "false"}

        # Both GPUs held: the job waits, then fails with one error line.
        other = devices.try_claim(str(locks / socket.gethostname()), ["1"])
        p = python(CLI, "train", str(run_json), "--out", str(tmp_path / "out"), "--gpu-locks", str(locks),
                   "--gpu-wait", "0.5", env=env)
        stdout, stderr = p.communicate(timeout=120)
        other.release()
        assert p.returncode == 1 and "all 2 GPUs (0,1) are held" in stdout, (stdout, stderr)
        assert stderr.strip().startswith("error: no GPU of 0,1 was released within 0.5 s"), stderr

        # Under SLURM (it sets CUDA_VISIBLE_DEVICES per job) nothing is claimed and the environment is kept.
        p = python(CLI, "train", str(run_json), "--out", str(tmp_path / "out"),
                   env={**env, "SLURM_JOB_ID": "5", "CUDA_VISIBLE_DEVICES": "3"})
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        assert json.loads(stdout.strip().splitlines()[-1])["cuda"] == "3" and "[gpu]" not in stdout
    finally:
        held.release()
