"""The paper configs: every row builds with Table 3's numbers; runlocal shrinks initialise sharded
and train two steps on fake data; an EDM -> CD chain through the real CLI on 8 devices.

Two training steps of every runlocal config cost a compile each (~15-100 s apiece on this shared
2-core CPU), so by default a covering subset runs (each network family, dataset source, method
and the release optimizer); CM_JAX_ALL_PAPER_STEPS=1 runs them all.
"""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import checkpoint, data, models, parallel
from cm_jax.data import fake
from cm_jax.train.experiment import Experiment
from cm_jax.train.step import make_train_step
from configs import cifar10, imagenet64, lsun256, paper
from tests.cli_runner import train

FILES = {"cifar10": cifar10, "imagenet64": imagenet64, "lsun256": lsun256}


def all_args() -> list[tuple[str, str]]:
  """(file, argument) for every method x variant (x category) the paper configs offer."""
  out = []
  for file, module in FILES.items():
    categories = [f",category={c}" for c in lsun256.CATEGORIES] if module is lsun256 else [""]
    for (method, variants), cat in itertools.product(module.METHODS.items(), categories):
      out += [(file, f"method={method},variant={v}{cat}") for v in variants]
  return out


ALL = all_args()


def get(file: str, arg: str):
  return FILES[file].get_config(arg)


@pytest.mark.parametrize("file,arg", ALL, ids=[f"{f}:{a}" for f, a in ALL])
def test_every_paper_config_builds(file, arg):
  for runlocal in ("", ",runlocal"):
    c = get(file, arg + runlocal)
    assert c.data.random_flip  # "random horizontal flips everywhere"
    assert c.method in ("edm", "cd", "ct", "ict", "ect", "trigflow", "sct", "scd", "meanflow")
    assert c.model.name == ("ncsnpp" if file == "cifar10" else "adm")
  # The runlocal shrink builds its network and method and traces its sharded state.
  c = get(file, arg + ",runlocal")
  assert c.consistency.distance != "lpips" and c.train.num_steps <= 4
  exp = Experiment.from_config(c)
  state = exp.abstract_state()
  assert state.params is not None


# (file, argument) -> the Table 3 / docs/maths.md values the config must carry.
EXPECTED = {
    ("cifar10", "method=cd"): dict(lr=4e-4, batch=512, opt="radam", mu=0.0, N=18, ema=0.9999,
                                   steps=800_000, dtype="float32", dist="lpips", dropout=0.0),
    ("cifar10", "method=ct"): dict(lr=4e-4, batch=512, opt="radam", mu0=0.9, s=(2, 150),
                                   ema=0.9999, steps=800_000, dtype="float32", dist="lpips"),
    ("imagenet64", "method=cd"): dict(lr=8e-6, batch=2048, opt="radam", mu=0.95, N=40,
                                      ema=0.999943, steps=600_000, dtype="bfloat16", dist="lpips"),
    ("imagenet64", "method=ct"): dict(lr=8e-6, batch=2048, opt="radam", mu0=0.95, s=(2, 200),
                                      ema=0.999943, steps=800_000, dtype="bfloat16"),
    ("lsun256", "method=cd,category=bedroom"): dict(lr=1e-5, batch=2048, mu=0.95, N=40,
                                                   ema=0.999943, steps=600_000, dtype="bfloat16"),
    ("lsun256", "method=ct,category=cat"): dict(lr=1e-5, batch=2048, mu0=0.95, s=(2, 150),
                                               ema=0.999943, steps=1_000_000, dtype="bfloat16"),
    # The PyTorch release's launch settings.
    ("imagenet64", "method=ct,variant=release"): dict(lr=1e-4, batch=2048, opt="adam",
                                                      ema_schedule="release"),
    ("lsun256", "method=ct,variant=release"): dict(lr=5e-5, batch=256, opt="adam"),
    ("lsun256", "method=cd,variant=release,category=cat"): dict(lr=1e-5, batch=256, opt="adam"),
    ("cifar10", "method=ct,variant=release"): dict(lr=2e-4, warmup=19531, ema_schedule="release"),
    # iCT (docs/maths.md §5) and the CIFAR-10 EDM teacher (docs/maths.md §11).
    ("cifar10", "method=ict"): dict(lr=1e-4, batch=1024, opt="radam", ema=0.99993,
                                    steps=400_000, dropout=0.3, dist="pseudo_huber",
                                    s=(10, 1280), fourier=0.02, blocks=4),
    ("cifar10", "method=ict_deep"): dict(blocks=8, fourier=0.02, dist="pseudo_huber"),
    ("imagenet64", "method=ict"): dict(dist="pseudo_huber", s=(10, 1280), dtype="bfloat16"),
    ("cifar10", "method=edm"): dict(lr=1e-3, batch=512, opt="adam", steps=400_000,
                                    dropout=0.13, fourier=16.0, ema=0.5 ** (512 / 5e5)),
    # MeanFlow's CIFAR-10 row: Adam 6e-4, batch 1024, 800k steps, 10M-image warm-up, EMA 0.99995.
    ("cifar10", "method=meanflow"): dict(lr=6e-4, batch=1024, opt="adam", steps=800_000,
                                         ema=0.99995, dropout=0.2, warmup=9765, dtype="float32"),
}


def test_meanflow_rows_carry_the_papers_sampler_and_weighting():
  c = get("cifar10", "method=meanflow")
  assert (c.model.time_inputs, c.model.null_class, c.model.class_conditional) == (2, False, False)
  mf = c.meanflow
  assert (mf.p_mean, mf.p_std, mf.ratio_r_neq_t, mf.norm_p, mf.norm_c) == (-2.0, 2.0, 0.75, 0.75,
                                                                          1e-3)
  assert mf.cfg_omega == 1.0 and mf.class_dropout == 0.0
  c = get("imagenet64", "method=meanflow")  # the paper's ImageNet sampler, guidance (our choice)
  mf = c.meanflow
  assert (mf.p_mean, mf.p_std, mf.ratio_r_neq_t, mf.norm_p) == (-0.4, 1.0, 0.25, 1.0)
  assert (mf.cfg_omega, mf.class_dropout, c.model.null_class) == (2.0, 0.1, True)


@pytest.mark.parametrize("key", EXPECTED, ids=[":".join(k) for k in EXPECTED])
def test_table3_values(key):
  c, want = get(*key), EXPECTED[key]
  got = dict(lr=c.optim.learning_rate, batch=c.train.batch_size, opt=c.optim.name,
             mu=c.distill.target_decay, N=c.distill.num_levels, mu0=c.consistency.mu0,
             s=(c.consistency.s0, c.consistency.s1), ema=c.ema_rate, steps=c.train.num_steps,
             dtype=c.model.dtype, dist=c.consistency.distance, dropout=c.model.dropout,
             warmup=c.optim.warmup_steps, ema_schedule=c.consistency.ema_schedule,
             fourier=c.model.fourier_scale, blocks=c.model.num_res_blocks)
  for k, v in want.items():
    if isinstance(v, float):
      assert got[k] == pytest.approx(v, rel=1e-6), (k, got[k], v)
    else:
      assert got[k] == v, (k, got[k], v)
  if "method=ct" in key[1] and "release" not in key[1]:
    assert c.optim.warmup_steps == 0 and c.consistency.ema_schedule == "paper"


def test_release_two_step_levels():
  # docs/maths.md §8: ts index 11 of 18 (CIFAR-10 CD), 22 of 40 (ImageNet 64 CD), 106 of 201 ...
  assert get("cifar10", "method=cd").sample.two_step_sigma == pytest.approx(0.5853, abs=1e-4)
  assert get("imagenet64", "method=cd").sample.two_step_sigma == pytest.approx(1.3824, abs=1e-4)
  assert get("imagenet64", "method=ct").sample.two_step_sigma == pytest.approx(1.9128, abs=1e-4)
  assert paper.ts_sigma(0, 40) == pytest.approx(80.0) and paper.ts_sigma(39, 40) == (
      pytest.approx(0.002))
  assert get("lsun256", "method=edm").sample.edm_levels == 40
  assert get("cifar10", "method=edm").sample.edm_levels == 18


def test_cifar10_network_is_the_released_ncsnpp():
  c = get("cifar10", "method=cd")
  module = models.create_model(c.model, c.data)
  shapes = jax.eval_shape(lambda k: models.init_params(module, k, c.data), jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 56_395_651  # docs/maths.md §12


@pytest.mark.parametrize("file,arg,message", [
    ("cifar10", "", r"needs a method: --config=configs/cifar10\.py:method=edm\|cd\|ct\|ict"),
    ("cifar10", "method=lcm", r"Unknown method 'lcm' .*edm, cd, ct, ict, ict_deep, ect, trigflow, sct, scd"),
    ("cifar10", "method=ict,variant=release", r"method=ict has variant paper, not 'release'"),
    ("imagenet64", "method=cd,variant=fast", r"variant paper \| release, not 'fast'"),
    ("lsun256", "method=ct,category=dog", r"category='dog' is not one of bedroom, cat"),
    ("lsun256", "method=ict", r"Unknown method 'ict' .*edm, cd, ct"),
    ("imagenet64", "method=cd,category=cat", r"does not take category; it takes method, variant "
                                             r"and runlocal"),
    ("cifar10", "method=cd,fast", r"Unknown config argument 'fast'"),
])
def test_bad_arguments_list_the_valid_ones(file, arg, message):
  with pytest.raises(ValueError, match=message):
    get(file, arg)


# --- runlocal: sharded init and two training steps on fake data ----------------------------------

@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("paper_fake_tfds"))
  for name in fake.SPLITS:
    fake.prepare_fake(name, path, num_examples=16)
  return path


# One of each network, dataset source and method, plus the release optimizer and schedule.
# (EDM and CIFAR-10 CD run through the CLI below.)
COVERING = [("cifar10", "method=ict_deep"), ("imagenet64", "method=cd"),
            ("lsun256", "method=ct,variant=release,category=cat"),
            ("cifar10", "method=sct")]  # sCM's jvp through NCSN++ (FIR resampling, attention)
STEPS = ALL if os.environ.get("CM_JAX_ALL_PAPER_STEPS") else COVERING


@pytest.mark.slow
@pytest.mark.parametrize("file,arg", STEPS, ids=[f"{f}:{a}" for f, a in STEPS])
def test_runlocal_initialises_sharded_and_trains_two_steps(fake_dir, file, arg):
  c = get(file, arg + ",runlocal")
  c.data.data_dir = fake_dir
  exp = Experiment.from_config(c)
  state = exp.init_state(int(c.seed))
  for leaf in jax.tree.leaves(state.params):
    assert isinstance(leaf.sharding, jax.sharding.NamedSharding)
  # CD: the student's own EMA stands in for the teacher (the real chain is tested below).
  frozen = jax.tree.map(jnp.copy, state.ema_params) if exp.method.uses_teacher else None
  step = make_train_step(exp.method, exp.tx, float(c.ema_rate), exp.mesh,
                         state_sharding=exp.state_sharding())
  batches = data.train_batches(c.data, global_batch_size=int(c.train.batch_size), seed=0)
  before = jax.tree.map(np.asarray, state.params)
  losses = []
  for _ in range(2):
    state, metrics = step(state, parallel.global_batch(next(batches), exp.mesh), frozen)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 2 and np.all(np.isfinite(losses)), losses
  moved = [not np.array_equal(a, np.asarray(b)) for a, b in
           zip(jax.tree.leaves(before), jax.tree.leaves(state.params))]
  assert any(moved)


@pytest.mark.slow
def test_cifar10_edm_teacher_then_cd_on_8_devices_and_ct_through_the_cli(fake_dir, tmp_path):
  """The real entry point: the runlocal EDM teacher, then CD from it on 8 forced CPU devices and
  the release's CT started from it (students must match the teacher's network: all come from the
  same file)."""
  teacher, student = tmp_path / "edm", tmp_path / "cd"
  common = [f"--config.data.data_dir={fake_dir}", "--config.train.num_steps=2",
            "--config.eval.report_at_end=False"]
  train(teacher, "configs/cifar10.py:method=edm,runlocal", *common, devices=1)
  out = train(student, "configs/cifar10.py:method=cd,runlocal", f"--config.teacher={teacher}",
              *common, devices=8)
  log = out.stdout + out.stderr
  assert "8 devices" in log and "Teacher:" in log, log[-2000:]
  assert checkpoint.has_checkpoint(str(student))
  # The release's CT starts from the same teacher's weights (method=ct takes an optional teacher).
  ct = tmp_path / "ct"
  out = train(ct, "configs/cifar10.py:method=ct,variant=release,runlocal",
              f"--config.teacher={teacher}", *common, devices=1)
  assert "Teacher:" in out.stdout + out.stderr and checkpoint.has_checkpoint(str(ct))


def test_runlocal_keeps_the_recipe_and_shrinks_the_rest():
  full, small = get("imagenet64", "method=cd"), get("imagenet64", "method=cd,runlocal")
  for key in ("method", "data.name", "model.name", "model.dtype", "model.class_conditional",
              "distill.num_levels", "distill.target_decay", "optim.name", "ema_rate"):
    a, b = full, small
    for part in key.split("."):
      a, b = a[part], b[part]
    assert a == b, key
  assert small.data.resolution == 8 and small.train.batch_size == 8
  assert small.consistency.distance == "l2"  # no LPIPS weights in a smoke run
  deep, plain = get("cifar10", "method=ict_deep,runlocal"), get("cifar10", "method=ict,runlocal")
  assert deep.model.num_res_blocks == 2 * plain.model.num_res_blocks
