"""CRD's memory bank (one row per training example and side): the rows of the batch move by the momentum rule,
the others stay bitwise; the negatives are capped below the bank size; the NCE normalising constants are set by
the first batch and then fixed."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ev3 import methods, models
from ev3.config import RunSpec, student_run, validate
from ev3.losses import crd_contrast_indices, crd_normalizer, crd_scores, l2_normalize
from ev3.methods.common import Frozen
from ev3.rng import stream


def spec_of(config, dataset, student, method, data_dir):
    return RunSpec.from_dict({**student_run(config, dataset, student, method, 0), "data_dir": data_dir})



def test_crd_bank_rows_of_the_batch_follow_the_momentum_rule_and_the_others_stay(smoke_config, mnist1d, data_dir):
    smoke_config["methods"]["crd"]["nce_k"] = 16384  # the authors' CIFAR-100 value, more than the data allow
    config = validate(smoke_config)
    crd = methods.get("crd")
    spec = spec_of(config, "mnist1d", "cnn-small", "crd", data_dir)
    net = models.build(config["models"]["cnn"], mnist1d.input_shape, mnist1d.num_classes, jax.random.key(1))
    teacher = Frozen(net.graphdef, net.params, net.rest)
    state = crd.init(spec, mnist1d, teacher, jax.random.key(0))
    n = mnist1d.splits["train"][0].shape[0]
    assert state.memory["student_bank"].shape == (n, 128) and state.fixed("n_data") == n
    counts = np.bincount(np.asarray(mnist1d.splits["train"][1]))
    assert state.fixed("nce_k") == min(16384, n - counts.max())  # capped below the bank size
    rows = np.array([5, 17, 300, 2999, 41, 1000, 7, 2500])  # a batch of scattered examples
    x, y = (a[rows] for a in mnist1d.splits["train"])
    batch = (x, y, jnp.asarray(rows, jnp.int32))

    # The embeddings the step sees, from the state before it (cnn-small has no BatchNorm: train = eval).
    (_, s_feats), _ = models.apply(state.graphdef, state.params["student"], state.rest["student"], x, features=True)
    (_, t_feats), _ = models.apply(teacher.graphdef, teacher.params, teacher.rest, x, features=True)
    heads = nnx.merge(state.connector_graphdef, state.params["connector"], state.rest["connector"])
    emb_s, emb_t = heads.student(s_feats.embedding), heads.teacher(t_feats.embedding)
    step = jax.jit(crd.step)
    new, _ = step(state, batch, jax.random.key(3))
    for bank, emb in (("student_bank", emb_s), ("teacher_bank", emb_t)):
        old, moved = np.asarray(state.memory[bank]), np.asarray(new.memory[bank])
        expected = l2_normalize(0.5 * old[rows] + 0.5 * np.asarray(emb), eps=0.0)
        np.testing.assert_allclose(moved[rows], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(moved[rows], axis=1), 1.0, rtol=1e-5)
        others = np.setdiff1d(np.arange(n), rows)
        np.testing.assert_array_equal(moved[others], old[others])
        assert not np.allclose(moved[rows], old[rows])

    # The normalising constants: unset (−1) before, mean score × n_data of the first batch after (each side
    # scored against the other side's bank, with the step's negatives), then fixed.
    assert np.all(np.asarray(state.memory["normalizers"]) == -1.0)
    idx = crd_contrast_indices(stream(jax.random.key(3), "negatives"), batch[2], y, state.memory["labels"], state.fixed("nce_k"))
    z_s = crd_normalizer(crd_scores(emb_s, state.memory["teacher_bank"], idx, 0.07), n)
    z_t = crd_normalizer(crd_scores(emb_t, state.memory["student_bank"], idx, 0.07), n)
    np.testing.assert_allclose(np.asarray(new.memory["normalizers"]), [float(z_s), float(z_t)], rtol=1e-5)
    newer, _ = step(new, (x[::-1], y[::-1], batch[2][::-1]), jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(newer.memory["normalizers"]), np.asarray(new.memory["normalizers"]))
