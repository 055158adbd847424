"""python -m cm_jax.bench --config=configs/cifar10.py:method=ct --batch_size=8 --train_steps=5
                       [--json=OUT.json]

Times a config's real train step (the jitted, sharded step `cm_jax.train` runs, with its network,
method, optimizer, EMA and target updates) on random data, and 1-step sampling; prints compile
time, step time, img/s, XLA's FLOPs, the fraction of peak and peak memory. `--train_steps=0`
compiles and analyses only (nothing allocated). What each JSON field means: docs/bench.md.
"""
from __future__ import annotations

import logging
import resource
import time
from typing import Optional

from absl import flags
from ml_collections import config_flags

from cm_jax import cli, files
from cm_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/cifar10.py:method=ct.",
    lock_config=True)
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch; default: the config's "
                              "train.batch_size.")
# Training steps: --steps of cm_jax.sample / evaluate counts sampling steps.
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 5, "Timed train steps after one warm-up step; "
                                    "0 = compile and analyse only.")
_SAMPLE_REPEATS = flags.DEFINE_integer("sample_repeats", 3, "Timed 1-step sampling calls "
                                       "(0 = skip sampling).")
_JSON = flags.DEFINE_string("json", None, "Also write the results here as JSON.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "CPU peak: side of the square matmul.")
flags.mark_flags_as_required(["config"])

log = logging.getLogger("cm_jax")

# Dense peak FLOP/s per device (vendor data sheets, without sparsity), by substring of
# jax.Device.device_kind, for (bfloat16, float32). float32 on NVIDIA means TF32 tensor cores,
# which XLA uses for float32 matmuls/convs by default (jax_default_matmul_precision).
PEAK_FLOPS = (
    ("H200", 989e12, 494e12),
    ("H100", 989e12, 494e12),      # SXM; PCIe is lower (756 / 378)
    ("A100", 312e12, 156e12),
    ("L4", 121e12, 60e12),
    ("A10", 125e12, 62.5e12),
    ("V100", 125e12, 15.7e12),     # no bf16 tensor cores: fp16's figure
    ("TPU v6", 918e12, 918e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5e", 197e12, 197e12),
    ("TPU v4", 275e12, 275e12),
    ("TPU v3", 123e12, 123e12),
)


def table_peak(device_kind: str, bf16: bool) -> Optional[float]:
  for name, p16, p32 in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return p16 if bf16 else p32
  return None


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def measure_matmul_peak(dtype, n: int, repeats: int = 5) -> tuple[float, float]:
  """(FLOP/s, FLOP per process CPU-second) of the best of `repeats` n^3 matmuls."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  mm(a, b).block_until_ready()
  best, best_cpu = float("inf"), float("inf")
  for _ in range(repeats):
    t, c = time.perf_counter(), _cpu_seconds()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
    best_cpu = min(best_cpu, _cpu_seconds() - c)
  return 2.0 * n ** 3 / best, 2.0 * n ** 3 / best_cpu


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def _memory_analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                        - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return out


def _random_batch(exp, batch_size: int, seed: int = 0) -> dict:
  import numpy as np
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (batch_size,) + tuple(exp.sample_shape)).astype(np.float32)
  classes = max(int(exp.config.data.num_classes), 1)
  return {"image": images, "label": rng.integers(0, classes, (batch_size,)).astype(np.int32)}


def run_benchmark(config, batch_size: Optional[int] = None, train_steps: int = 5,
                  sample_repeats: int = 3, matmul_size: int = 2048) -> dict:
  """Builds the config's train step and sampler, times them, returns the figures (a dict)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from cm_jax import distances, models, parallel
  from cm_jax.models import layers
  from cm_jax.train.experiment import Experiment
  from cm_jax.train.step import make_train_step

  notes = []
  if config.method != "edm" and config.consistency.distance == "lpips":
    try:
      distances.get_distance("lpips", (1, 1, 1), config.consistency.get("lpips_weights", ""))
    except (ValueError, OSError) as e:
      config.consistency.distance = "l2"
      notes.append("distance lpips unavailable (no converted weights: set "
                   "--config.consistency.lpips_weights=DIR to include it): benchmarked with l2, "
                   f"so the LPIPS network's cost is not included ({str(e).splitlines()[0][:120]})")
  if config.get("teacher"):
    config.teacher = ""
  exp = Experiment.from_config(config)
  mesh = exp.mesh
  devices = int(mesh.devices.size)
  batch_size = int(batch_size or config.train.batch_size)
  grad_accum = int(config.train.get("grad_accum", 1))
  parallel.check_batch_size(batch_size, mesh, grad_accum)
  device = jax.devices()[0]
  platform, kind = device.platform, device.device_kind
  compute = str(config.model.get("dtype", "float32"))
  log.info("bench: %s %s on %d x %s (%s), global batch %d, %s compute", config.method,
           config.model.name, devices, kind, platform, batch_size, compute)

  batch = parallel.global_batch(_random_batch(exp, batch_size), mesh)
  if train_steps > 0:
    state = exp.init_state(int(config.seed))
  else:  # analyse only: shapes and shardings, nothing allocated (a 296M-parameter state is 6 GB)
    state = exp.abstract_state()
    sample_repeats = 0
  n_params = models.num_params(state.params)
  frozen = None
  if exp.method.uses_teacher:
    frozen = state.ema_params if train_steps == 0 else jax.tree.map(jnp.copy, state.ema_params)
    notes.append("cd: the student's weights stand in for the teacher's (same cost)")
  # Built exactly as cm_jax.train.loop builds it.
  kwargs = dict(skip_nonfinite=bool(config.train.get("skip_nonfinite", False)),
                state_sharding=exp.state_sharding())

  def build(accum: int = grad_accum, **options):
    step = make_train_step(exp.method, exp.tx, float(config.ema_rate), mesh, **kwargs,
                           grad_accum=accum)
    return step.lower(state, batch, frozen).compile(**options)

  def count_flops(program, **options) -> float:
    """XLA counts a loop's body once, so a split step's FLOPs are those of the unsplit one."""
    return _flops(program if grad_accum == 1 else build(1, **options))

  t = time.perf_counter()
  compiled = build()
  compile_s = time.perf_counter() - t
  flops = executed_flops = count_flops(compiled)
  if grad_accum > 1:
    notes.append(f"grad_accum={grad_accum}: FLOPs counted on the unsplit step (the same work)")
  mem = _memory_analysis(compiled)
  mem_plain = None
  if platform == "cpu":
    # The CPU conv rewrites (models/layers.py) also multiply at padding positions, so XLA's
    # count for the program that runs overstates the network's work by a few percent: count
    # the same step written with lax convolutions instead, the program a GPU compiles. Its
    # memory figure is taken with XLA:CPU's memory-minimising schedule: the default
    # concurrency-optimised one keeps many more buffers alive at once to run them in parallel.
    with layers.plain_convs():
      options = {"compiler_options": {
          "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}}
      plain = build(**options)
      flops, mem_plain = count_flops(plain, **options), _memory_analysis(plain)
    del plain

  step_s, times, cpu_times = None, [], []
  if train_steps > 0:
    state, metrics = compiled(state, batch, frozen)          # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(train_steps):
      t, c = time.perf_counter(), _cpu_seconds()
      state, metrics = compiled(state, batch, frozen)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
      cpu_times.append(_cpu_seconds() - c)
    step_s = float(np.median(times))
    loss = float(jax.device_get(metrics["loss"]))
    if not np.isfinite(loss):
      notes.append(f"non-finite loss {loss} on random data")

  bf16 = compute == "bfloat16"
  peak = table_peak(kind, bf16) if platform != "cpu" else None
  cpu_fraction = None
  if peak is not None:
    peak_source = f"table ({kind}, {'bf16' if bf16 else 'fp32/tf32'} dense)"
  else:
    peak, flops_per_cpu_s = measure_matmul_peak(jnp.bfloat16 if bf16 else jnp.float32,
                                                matmul_size)
    if cpu_times:
      # Contention-robust on a shared CPU: FLOPs per process CPU-second, step vs matmul.
      cpu_fraction = flops / float(np.median(cpu_times)) / flops_per_cpu_s
    peak_source = f"measured: {matmul_size}^3 {'bf16' if bf16 else 'fp32'} matmul"

  peak_memory, memory_source = None, None
  stats = device.memory_stats() if platform != "cpu" else None
  if stats and stats.get("peak_bytes_in_use"):
    peak_memory, memory_source = int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  elif mem:
    peak_memory = mem["total_bytes"]
    memory_source = ("compiled.memory_analysis(): arguments + outputs - aliased + temporaries "
                     "of the train step, per device")

  sample_img_per_s, sample_compile_s = None, None
  if sample_repeats > 0:
    # 1 step from the top of the model's own time (sigma_max, TrigFlow's pi/2, MeanFlow's 1)
    run = exp.sampler(exp.default_plan()) if not exp.is_denoiser else None
    if run is None:
      notes.append("edm: a denoiser has no 1-step sampler; sample_img_per_s times Euler "
                   "over 2 levels (2 network evaluations) instead")
      from cm_jax import sampling
      run = exp.sampler(sampling.EDMPlan(num_levels=2, solver="euler"))
    labels = exp.resolve_labels(None, batch_size, seed=0)
    labels = None if labels is None else jax.device_put(labels, parallel.batch_sharding(mesh))
    idx = jax.device_put(np.arange(batch_size, dtype=np.int32), parallel.batch_sharding(mesh))
    key = jax.random.PRNGKey(0)
    t = time.perf_counter()
    jax.block_until_ready(run(state.ema_params, key, idx, labels))
    sample_compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(sample_repeats):
      out = run(state.ema_params, key, idx, labels)
    jax.block_until_ready(out)
    sample_img_per_s = batch_size * sample_repeats / (time.perf_counter() - t)

  result = {
      "config": {"method": config.method, "model": config.model.name,
                 "dataset": config.data.name, "resolution": int(config.data.resolution),
                 "dtype": compute, "distance": config.consistency.distance},
      "device": kind, "platform": platform, "devices": devices,
      "batch_size": batch_size, "batch_per_device": batch_size // devices,
      "grad_accum": grad_accum,
      "params": n_params,
      "compile_s": compile_s,
      "step_s": step_s, "step_times_s": times,
      "img_per_s_per_device": None if step_s is None else batch_size / step_s / devices,
      "flops_per_step": flops, "flops_per_step_executed": executed_flops,
      "peak_flops": peak, "peak_flops_source": peak_source,
      "achieved_flops": None if step_s is None else flops / step_s,
      "peak_fraction": None if step_s is None else flops / step_s / peak,
      "peak_fraction_best": None if step_s is None else flops / min(times) / peak,
      "peak_fraction_cpu_time": cpu_fraction, "step_cpu_s": cpu_times,
      "peak_memory_bytes": peak_memory, "peak_memory_source": memory_source,
      "memory_analysis": mem, "memory_analysis_plain_convs": mem_plain,
      "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "sample_img_per_s": sample_img_per_s, "sample_compile_s": sample_compile_s,
      "notes": notes,
  }
  return result


def format_table(r: dict) -> str:
  gib = lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB"
  num = lambda v, f: "-" if v is None else format(v, f)
  rows = [
      ("config", f"{r['config']['method']} / {r['config']['model']} / {r['config']['dataset']} "
                 f"{r['config']['resolution']}px / {r['config']['dtype']}"),
      ("device", f"{r['devices']} x {r['device']} ({r['platform']})"),
      ("batch", f"{r['batch_size']} ({r['batch_per_device']} per device"
                + (f", {r['grad_accum']} micro-batches)" if r.get("grad_accum", 1) > 1 else ")")),
      ("params", f"{r['params']:,}"),
      ("compile", f"{r['compile_s']:.1f} s"),
      ("step", "-" if r["step_s"] is None else f"{r['step_s'] * 1e3:.1f} ms"),
      ("img/s per device", num(r["img_per_s_per_device"], ".2f")),
      ("FLOPs per step", f"{r['flops_per_step']:.4g}"
       + ("" if r["flops_per_step_executed"] == r["flops_per_step"]
          else f" (the CPU program runs {r['flops_per_step_executed']:.4g})")),
      ("achieved FLOP/s", num(r["achieved_flops"], ".4g")),
      ("peak FLOP/s", f"{r['peak_flops']:.4g} ({r['peak_flops_source']})"),
      ("peak fraction", num(r["peak_fraction"], ".1%")
       + ("" if r["peak_fraction_best"] is None
          else f" (fastest step: {r['peak_fraction_best']:.1%})")
       + ("" if r["peak_fraction_cpu_time"] is None
          else f" (per CPU-second: {r['peak_fraction_cpu_time']:.1%})")),
      ("peak memory", f"{gib(r['peak_memory_bytes'])} ({r['peak_memory_source']})"),
      ("memory, lax convs, min-memory schedule", "-" if not r["memory_analysis_plain_convs"]
       else gib(r["memory_analysis_plain_convs"]["total_bytes"])),
      ("process max RSS", gib(r["process_max_rss_bytes"])),
      ("1-step sampling", "-" if r["sample_img_per_s"] is None
       else f"{r['sample_img_per_s']:.2f} img/s"),
  ]
  width = max(len(k) for k, _ in rows)
  lines = [f"{k:<{width}}  {v}" for k, v in rows] + [f"note: {n}" for n in r["notes"]]
  return "\n".join(lines)


def main() -> None:
  if _TRAIN_STEPS.value < 0 or _SAMPLE_REPEATS.value < 0:
    raise UserError("--train_steps and --sample_repeats must be >= 0.")
  if _BATCH.value is not None and _BATCH.value < 1:
    raise UserError("--batch_size must be >= 1.")
  if _JSON.value:
    files.check_output_file(_JSON.value, "--json", ".json")
  result = run_benchmark(_CONFIG.value, _BATCH.value, _TRAIN_STEPS.value, _SAMPLE_REPEATS.value,
                         _MATMUL.value)
  print(format_table(result))
  if _JSON.value:
    files.write_json_atomically(_JSON.value, result, indent=1)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  cli.run(main)
