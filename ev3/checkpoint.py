"""Checkpoints with orbax: a network's ``params`` and ``rest`` (e.g. BatchNorm statistics), and the resume
state of a training loop (:class:`ResumeStore`, used by :func:`ev3.train.fit`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from ev3 import io, models


@contextlib.contextmanager
def _writing(path: str, parent: str, name: str):
    """An orbax save of ``path`` (the directory ``name`` in ``parent``): any failure (tensorstore reports a full
    disk as a ValueError naming the OS error code) removes orbax's temporary directories of ``name`` and raises
    :class:`ev3.io.WriteError`; orbax's own error log lines (a traceback per writer thread) are held back, as
    the error says it in one line."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as error:
        for entry in os.listdir(parent) if os.path.isdir(parent) else []:
            if entry.startswith(f"{name}.orbax-checkpoint-tmp"):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        raise io.write_failure(path, error) from error
    finally:
        absl.setLevel(level)


def save_network(path: str, params, rest) -> None:
    """An orbax checkpoint of a network at ``path`` (a directory), replaced atomically: orbax writes a temporary
    directory and renames it; on a failure nothing is left beside ``path`` (:class:`ev3.io.WriteError`)."""
    path = os.path.abspath(path)
    with _writing(path, os.path.dirname(path), os.path.basename(path)), ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"params": params, "rest": rest})


def load_network(path: str, model_config: dict, input_shape, num_classes: int) -> models.Network:
    """Restore into the structure of a freshly built model of the same config (the init key is irrelevant)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    like = models.build(model_config, input_shape, num_classes, jax.random.key(0))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": like.params, "rest": like.rest})
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, target)
    return models.Network(like.graphdef, restored["params"], restored["rest"])


# --- Resume state of a training loop -------------------------------------------------------------------------

RESUME_KEEP = 2  # the newest checkpoint and the one before it (the fallback when the newest is unreadable)


def _savable(x):
    """Typed PRNG key arrays are stored as their raw key data."""
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _digest(x) -> str:
    a = np.ascontiguousarray(np.asarray(x))
    return hashlib.blake2b(f"{a.dtype}{a.shape}".encode() + a.tobytes(), digest_size=16).hexdigest()


def fingerprint(config: dict, *trees) -> str:
    """Identity of a run: its resolved config plus the values of input pytrees (e.g. the teacher's parameters)."""
    h = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16)
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            h.update(_digest(_savable(leaf)).encode())
    return h.hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


class ResumeStore:
    """Checkpoints of one training run under ``directory``, one orbax step directory ``<directory>/<step>/`` each.

    A checkpoint holds named pytrees (their leaves only: a tree is restored into the structure of a freshly
    built one) and a JSON ``meta`` dict (loop bookkeeping) plus the run's fingerprint and a digest of every
    leaf. Steps are committed atomically by orbax (temporary directory, then rename), and the
    :data:`RESUME_KEEP` newest are kept. A save that fails (e.g. a full disk) leaves the committed steps as they
    were and no temporary directory, and raises :class:`ev3.io.WriteError`. :meth:`restore` falls back from a
    checkpoint that orbax cannot read, whose digests do not match or that belongs to another run (deleting it,
    with a log line) to the previous one, and to a fresh start when none is usable. Non-finite values are never
    written.
    """

    def __init__(self, directory: str, fingerprint: str, *, log=print):
        self.directory = os.path.abspath(directory)
        self.fingerprint = fingerprint
        self.log = log
        self._manager = None

    def _open(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=RESUME_KEEP, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def _discard(self, step: int, why: str) -> None:
        self.log(f"checkpoint at step {step} in {self.directory} is unusable ({why}); discarded")
        shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)

    def save(self, step: int, trees: dict, meta: dict) -> None:
        leaves = {name: [_savable(x) for x in jax.tree.leaves(tree)] for name, tree in trees.items()}
        digests = {}
        for name, xs in leaves.items():
            hosts = [np.asarray(x) for x in xs]
            if any(np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)) for a in hosts):
                raise FloatingPointError(f"refusing to checkpoint non-finite values ({name}) at step {step}")
            digests[name] = [_digest(a) for a in hosts]
        meta = {**meta, "step": step, "fingerprint": self.fingerprint, "digests": digests}
        args = ocp.args.Composite(arrays=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
        with _writing(os.path.join(self.directory, str(step)), self.directory, str(step)):
            manager = self._open()
            if step in manager.all_steps():
                manager.delete(step)
            manager.save(step, args=args, force=True)
            manager.wait_until_finished()

    def restore(self, likes) -> tuple[int, dict, dict] | None:
        """The newest usable checkpoint as ``(step, trees, meta)``, each tree restored into the structure (and
        shapes, dtypes, shardings) of the same-named tree in ``likes``; None when there is none.

        ``likes`` is a dict of pytrees, or a function of the checkpoint's ``meta`` returning one (for a run
        whose structure changes as it goes, e.g. an EV3 student that grows)."""
        likes_for = likes if callable(likes) else (lambda meta: likes)
        if not os.path.isdir(self.directory):
            return None
        manager = self._open()
        committed = set(manager.all_steps())
        for name in os.listdir(self.directory):  # a step directory orbax does not list is incomplete
            if re.fullmatch(r"\d+", name) and int(name) not in committed:
                self._discard(int(name), "incomplete step directory")
        tried = False
        for step in sorted(committed, reverse=True):
            tried = True
            try:
                meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                if meta.get("fingerprint") != self.fingerprint:
                    self._discard(step, "written by a different run config or teacher")
                    continue
                if meta.get("step") != step:
                    raise ValueError(f"its metadata is for step {meta.get('step')}")
                likes = likes_for(meta)
                targets = {
                    name: [ocp.utils.to_shape_dtype_struct(_savable(x)) for x in jax.tree.leaves(like)]
                    for name, like in likes.items()
                }
                arrays = manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(targets)))["arrays"]
                for name, xs in arrays.items():
                    if [_digest(x) for x in xs] != meta["digests"][name]:
                        raise ValueError(f"{name}: stored values do not match their digests")
            except Exception as error:  # orbax/tensorstore raise many kinds on a truncated or missing file
                self._discard(step, _first_line(error))
                continue
            trees = {}
            for name, like in likes.items():
                like_leaves = jax.tree.leaves(like)
                restored = [
                    jax.random.wrap_key_data(x, impl=jax.random.key_impl(l))
                    if jax.dtypes.issubdtype(l.dtype, jax.dtypes.prng_key)
                    else x
                    for x, l in zip(arrays[name], like_leaves)
                ]
                trees[name] = jax.tree.unflatten(jax.tree.structure(like), restored)
            manager.reload()
            return step, trees, meta
        manager.reload()
        if tried:
            self.log(f"no usable checkpoint in {self.directory}; starting from scratch")
        return None

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None
