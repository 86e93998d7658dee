"""The CIFAR model zoo of RepDistiller / mdistiller (``ev3/models/{vgg, mobilenetv2, shufflenetv1, shufflenetv2,
resnetv2}.py``) and the heterogeneous pairs of config/cifar100.yaml.

Parameter counts against the suites' PyTorch models; logits and feature-tap shapes (``jax.eval_shape``: nothing
is compiled); every feature method's connector and loss on each heterogeneous pair of the config, on abstract
features; the config checks (schema, stage counts, growth, per-student learning rate); and one compiled FitNet
step on a heterogeneous pair (resnet32x4 → vgg8)."""

import copy
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ev3 import methods, models
from ev3.config import STAGES, ConfigError, student_run, teacher_of, validate
from ev3.losses import attention_loss, fitnet_loss, hcl_loss, rkd_loss
from ev3.methods.common import Frozen
from ev3.methods.crd import ContrastHeads
from ev3.methods.feature import pair_maps
from ev3.methods.fitnet import hint
from ev3.methods.reviewkd import levels
from ev3.models.connectors import HintRegressor, ReviewFusion

from test_feature_cifar import CIFAR100, batch_of, spec_of, synthetic

# Trainable parameters with 100 classes: ``sum(p.numel() for p in model.parameters())`` of the suites' PyTorch
# models (RepDistiller models/*.py and mdistiller mdistiller/models/cifar/*.py give the same counts; torch 2.13.0,
# CPU). BatchNorm running statistics are buffers there and nnx.BatchStat here, not parameters. The other options
# match as well (not tested here, to keep the tests fast): mobilenetv2_T_w(6, 1.0, 100) 2,353,060 (width 1),
# ShuffleNetV2(net_size=0.5) 443,716, ResNet34 21,328,292, ResNet101 42,697,380, ResNet152 58,341,028.
COUNTS = [
    ("vgg8", {"type": "vgg", "depth": 8}, 3_965_028),  # vgg.py vgg8_bn(num_classes=100)
    ("vgg11", {"type": "vgg", "depth": 11}, 9_277_284),  # vgg11_bn(num_classes=100)
    ("vgg13", {"type": "vgg", "depth": 13}, 9_462_180),  # vgg13_bn(num_classes=100)
    ("vgg16", {"type": "vgg", "depth": 16}, 14_774_436),  # vgg16_bn(num_classes=100)
    ("vgg19", {"type": "vgg", "depth": 19}, 20_086_692),  # vgg19_bn(num_classes=100)
    ("mobilenetv2", {"type": "mobilenetv2"}, 812_836),  # mobilenetv2.py mobile_half(100)
    ("shufflenetv1", {"type": "shufflenetv1"}, 949_258),  # ShuffleNetv1.py ShuffleV1(num_classes=100)
    ("shufflenetv2", {"type": "shufflenetv2"}, 1_355_528),  # ShuffleNetv2.py ShuffleV2(num_classes=100)
    ("resnet18", {"type": "resnetv2", "depth": 18}, 11_220_132),  # resnetv2.py ResNet18(num_classes=100)
    ("resnet50", {"type": "resnetv2", "depth": 50}, 23_705_252),  # ResNet50(num_classes=100)
]
CONFIGS = {name: config for name, config, _ in COUNTS}

# Stage shapes (H, W, C) and embedding width on a 32×32×3 input: the suites' feats[1:] and pooled_feat of the
# same PyTorch models on a (2, 3, 32, 32) batch, channels last.
VGG = [(16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)]
TAPS = {
    "vgg8": (VGG, 512),
    "vgg13": (VGG, 512),
    "mobilenetv2": ([(16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)], 1280),
    "shufflenetv1": ([(16, 16, 240), (8, 8, 480), (4, 4, 960)], 960),
    "shufflenetv2": ([(16, 16, 116), (8, 8, 232), (4, 4, 464)], 1024),
    "resnet18": ([(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)], 512),
    "resnet50": ([(32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)], 2048),
}
X = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)


@functools.cache
def abstract_split(config_json: str):
    """(graphdef, params, rest) of a model on 32×32×3 inputs with 100 classes, leaves abstract (nnx.eval_shape)."""
    config = json.loads(config_json)
    options = {k: v for k, v in config.items() if k != "type"}
    module = nnx.eval_shape(lambda: models.MODEL_TYPES[config["type"]]((32, 32, 3), 100, **options,
                                                                         rngs=nnx.Rngs(0)))
    return nnx.split(module, nnx.Param, ...)


@functools.cache
def abstract_outputs(config_json: str):
    """(logits, Features) of the model on ``X`` in eval mode, as ``jax.ShapeDtypeStruct``."""
    graphdef, params, rest = abstract_split(config_json)
    (logits, feats), _ = jax.eval_shape(lambda p, r, x: models.apply(graphdef, p, r, x, features=True), params, rest, X)
    return logits, feats


def key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


@pytest.mark.parametrize("config, expected", [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS])
def test_parameter_counts_are_the_suites(config, expected):
    _, params, _ = abstract_split(key(config))
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == expected


@pytest.mark.parametrize("name", list(TAPS))
def test_logits_and_feature_taps_have_the_suites_shapes(name):
    """Logits (B, 100) float32; ``stages`` and ``preact`` the suites' feats[1:] / preact_feats[1:] shapes; the
    embedding their pooled feature; as many stages as config validation counts (``ev3.config.STAGES``)."""
    config = CONFIGS[name]
    logits, feats = abstract_outputs(key(config))
    stages, width = TAPS[name]
    assert logits.shape == (2, 100) and logits.dtype == jnp.float32
    assert [f.shape[1:] for f in feats.stages] == stages
    assert [f.shape for f in feats.preact] == [f.shape for f in feats.stages]
    assert feats.embedding.shape == (2, width)
    assert len(feats.stages) == STAGES[config["type"]]


HETEROGENEOUS = [s for s in CIFAR100["students"]
                 if CIFAR100["models"][s]["type"] != CIFAR100["models"][teacher_of(CIFAR100, s)]["type"]]


def test_cifar100_runs_the_suites_heterogeneous_pairs():
    """vgg13 → MobileNetV2, resnet32x4 → ShuffleNetV2, ResNet50 → MobileNetV2 (CRD Table 2), as the suites define
    the networks (mobile_half, ShuffleV2, vgg13_bn, ResNet50)."""
    pairs = {(key(CIFAR100["models"][s]), teacher_of(CIFAR100, s)) for s in HETEROGENEOUS}
    mobile, shuffle = key({"type": "mobilenetv2"}), key({"type": "shufflenetv2"})
    assert pairs == {(mobile, "vgg13"), (shuffle, "resnet32x4"), (mobile, "resnet50")}
    assert CIFAR100["models"]["vgg13"] == CONFIGS["vgg13"] and CIFAR100["models"]["resnet50"] == CONFIGS["resnet50"]


def abstract_apply(module: nnx.Module, *inputs):
    """Output shapes of an abstract module (from ``nnx.eval_shape``) on abstract inputs; its train-mode call."""
    graphdef, state = nnx.split(module)
    return jax.eval_shape(lambda s, *xs: nnx.merge(graphdef, s)(*xs), state, *inputs)


@pytest.mark.parametrize("student", HETEROGENEOUS)
def test_every_feature_method_connects_the_heterogeneous_pairs(student):
    """On the abstract eval-mode features of the pair (shapes as in training): FitNet's regressor maps the
    student's hint onto the teacher's, AT pairs every stage, RKD and CRD take the embeddings, ReviewKD's fusion
    gives the teacher's levels; every loss is a scalar. Config validation accepts AT and ReviewKD on the pair."""
    s_config, t_config = CIFAR100["models"][student], CIFAR100["models"][teacher_of(CIFAR100, student)]
    (_, s), (_, t) = abstract_outputs(key(s_config)), abstract_outputs(key(t_config))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    regressor = nnx.eval_shape(lambda: HintRegressor(hint(s.stages).shape[1:], hint(t.stages).shape[1:],
                                                     rngs=nnx.Rngs(0)))
    projected = abstract_apply(regressor, hint(s.stages))
    assert projected.shape == hint(t.stages).shape
    assert jax.eval_shape(fitnet_loss, projected, hint(t.stages)) == scalar

    fs, ft = jax.eval_shape(pair_maps, s.stages, t.stages)
    assert len(fs) == len(s.stages) and [a.shape[1:3] for a in fs] == [b.shape[1:3] for b in ft]
    assert jax.eval_shape(lambda a, b: attention_loss(a, b, p=2.0), fs, ft) == scalar

    assert jax.eval_shape(lambda a, b: rkd_loss(a, b, distance_weight=25.0, angle_weight=50.0),
                          s.embedding, t.embedding) == scalar
    heads = nnx.eval_shape(lambda: ContrastHeads(s.embedding.shape[1:], t.embedding.shape[1:], 128, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(heads)
    embedded = jax.eval_shape(lambda st, a, b: (nnx.merge(graphdef, st).student(a), nnx.merge(graphdef, st).teacher(b)),
                              state, s.embedding, t.embedding)
    assert [e.shape for e in embedded] == [(2, 128), (2, 128)]

    s_levels, t_levels = levels(s, teacher=False), levels(t, teacher=True)
    fusion = nnx.eval_shape(lambda: ReviewFusion([f.shape[1:] for f in s_levels], [f.shape[1:] for f in t_levels],
                                                 max_mid_channel=512, rngs=nnx.Rngs(0)))
    outputs = abstract_apply(fusion, s_levels)
    targets = [jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outputs]
    assert [o.shape[1:] for o in outputs] == [(*(f.shape[1:-1] or (1, 1)), f.shape[-1]) for f in t_levels]
    assert jax.eval_shape(hcl_loss, outputs, targets) == scalar
    for name in ("at", "reviewkd"):
        assert student in CIFAR100["methods"][name].get("students", CIFAR100["students"])


def test_one_compiled_fitnet_step_from_a_resnet_to_vgg8():
    """A heterogeneous pair, resnet32x4 → vgg8 (the CIFAR ResNet teacher of the config; vgg8, the suites' cheapest
    zoo student to compile), with the CIFAR-100 config's FitNet, batch 4 of synthetic CIFAR-shaped data: the hint
    regressor is a transposed convolution (student 8×8×256 → teacher 16×16×128); one compiled step gives a finite
    loss, moves every student parameter and BatchNorm statistic, and leaves the teacher's parameters and
    statistics bitwise unchanged. (The heterogeneous pairs of the config are checked above on abstract features:
    compiling a MobileNetV2 or ShuffleNet step takes about twice as long.)"""
    config = copy.deepcopy(CIFAR100)
    config["models"].update(vgg8=CONFIGS["vgg8"])
    config["students"], config["teacher"]["model"] = ["vgg8"], {"vgg8": "resnet32x4"}
    config["methods"], config["anchors"] = {"fitnet": config["methods"]["fitnet"]}, {}
    config.pop("student_learning_rate")
    config = validate(config)
    data = synthetic(100)
    teacher = models.build(config["models"]["resnet32x4"], data.input_shape, 100, jax.random.key(1))
    module = methods.get("fitnet")
    state = module.init(spec_of(config, "vgg8", "fitnet"), data, Frozen(*teacher), jax.random.key(0))
    assert state.params["connector"]["conv"]["kernel"].value.shape == (4, 4, 256, 128)  # ConvTranspose
    new, logs = jax.jit(module.step)(state, batch_of(data, "fitnet"), jax.random.key(1))
    assert np.isfinite(float(logs["loss"])) and float(logs["distill_loss"]) > 0

    def moved(a, b):
        return [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]

    assert all(moved(new.params["student"], state.params["student"]))
    assert all(moved(new.rest["student"], state.rest["student"]))
    assert not any(moved(new.teacher.params, teacher.params)) and not any(moved(new.teacher.rest, teacher.rest))


# --- Config ------------------------------------------------------------------------------------------------------

SCHEMA = [
    ({"type": "vgg", "depth": 8, "dtype": "bfloat16"}, True),
    ({"type": "mobilenetv2", "width": 1.0, "expansion": 6}, True),
    ({"type": "shufflenetv1"}, True),
    ({"type": "shufflenetv2", "net_size": 0.5}, True),
    ({"type": "resnetv2", "depth": 50}, True),
    ({"type": "vgg", "depth": 10}, False),
    ({"type": "vgg", "depth": 8, "batch_norm": False}, False),
    ({"type": "mobilenetv2", "width": 0}, False),
    ({"type": "shufflenetv1", "groups": 3}, False),
    ({"type": "shufflenetv2", "net_size": 0.75}, False),
    ({"type": "resnetv2"}, False),
]


@pytest.mark.parametrize("model, valid", SCHEMA, ids=[json.dumps(m) for m, _ in SCHEMA])
def test_the_schema_takes_the_zoo_options_and_refuses_others(smoke_config, model, valid):
    smoke_config["models"]["extra"] = model
    if valid:
        validate(smoke_config)
    else:
        with pytest.raises(ConfigError, match="^models/extra"):
            validate(smoke_config)


def cifar100_with(**teachers):
    """config/cifar100.yaml with students re-assigned to other teachers (models from the config)."""
    config = copy.deepcopy(CIFAR100)
    config["teacher"]["model"].update(teachers)
    return config


@pytest.mark.parametrize("method", ["at", "reviewkd"])
def test_stage_by_stage_methods_are_refused_where_the_stage_counts_differ(method):
    """resnet32x4 (3 stages) → MobileNetV2 (4): AT and ReviewKD pair stages one to one, so neither can run; the
    error names the method instance and the way out."""
    config = cifar100_with(mobilenetv2="resnet32x4")
    others = [s for s in config["students"] if s != "mobilenetv2"]
    for other in {"at", "reviewkd"} - {method}:
        config["methods"][other]["students"] = others
    with pytest.raises(ConfigError, match=f"^methods/{method}: {method} pairs stages, and student 'mobilenetv2' "
                                          "has 4 but teacher 'resnet32x4' 3; restrict it with methods/"):
        validate(config)
    config["methods"][method]["students"] = others
    validate(config)


def test_ev3_growth_is_refused_on_students_without_a_growth_operator():
    config = copy.deepcopy(CIFAR100)
    config["methods"]["ev3"].pop("students")
    with pytest.raises(ConfigError, match="^methods/ev3/growth: no growth operator for student 'mobilenetv2' of "
                                          "type 'mobilenetv2'"):
        validate(config)
    config["methods"]["ev3"]["growth"] = None  # EV3 without growth runs on any student
    validate(config)


def test_student_learning_rate_sets_that_students_optimizer_only():
    config = validate(CIFAR100)
    lr = {s: student_run(config, "cifar100", s, "kd", 0)["train"]["optimizer"]["learning_rate"]
          for s in config["students"]}
    assert lr == {"resnet20": 0.05, "resnet8x4": 0.05, "wrn16_2": 0.05, "mobilenetv2": 0.01, "shufflenetv2": 0.01,
                  "mobilenetv2_r50": 0.01}
    assert config["train"]["optimizer"]["learning_rate"] == 0.05  # the config itself is not changed
    bad = copy.deepcopy(CIFAR100)
    bad["student_learning_rate"]["vgg13"] = 0.01  # a teacher, not a student
    with pytest.raises(ConfigError, match="^student_learning_rate/vgg13: not one of the students"):
        validate(bad)
