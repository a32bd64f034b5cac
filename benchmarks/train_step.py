"""Train-step benchmark: compile time, step time and pairs/s on random batches.

    python benchmarks/train_step.py                         # demo (small) and ViT-B/16 configs
    python benchmarks/train_step.py --presets demo --batch_size 128 --steps 20
    python benchmarks/train_step.py --presets paper --batch_size 8 --dtype bfloat16
    python benchmarks/train_step.py --presets demo --token_keep_fractions 1.0,0.5,0.25  # FLIP

Random inputs isolate the compiled step from the input pipeline; the model, optimizer, shardings
and donation are exactly those of training (built by the same functions).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import clip  # noqa: E402
from medclip_jax import sharding, train  # noqa: E402
from medclip_jax.data import synthetic_batch  # noqa: E402
from medclip_jax.models import build_model  # noqa: E402

VOCAB = {"demo": 30522, "paper": 49408, "tiny": 260}


def device_bytes(compiled) -> int:
    """XLA's per-device estimate of the step's peak: arguments + outputs + temporaries."""
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def compiled_step(config):
    """(mesh, state, random batch, the compiled train step, its compile time in s): the step
    exactly as training builds it."""
    mesh = sharding.make_mesh(dict(config.mesh))
    sharding.check_batch_size(config.batch_size, mesh)
    model = build_model(config.model, config.method)
    state, jitted = train.init_state_and_step(config, model, mesh, total_steps=10_000,
                                              rng=jax.random.key(0))
    batch = sharding.to_global_batch(synthetic_batch.random_batch(config, config.batch_size), mesh)
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, train.step_rng(0, 0)).compile()
    return mesh, state, batch, compiled, time.perf_counter() - start


def benchmark_config(config, steps: int) -> dict[str, float]:
    """Compile time, median step time, pairs/s and per-device memory of the config's step."""
    _, state, batch, compiled, compile_s = compiled_step(config)
    state, metrics = compiled(state, batch, train.step_rng(0, 0))
    jax.block_until_ready(metrics)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, train.step_rng(0, step + 1))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"params_M": num_params / 1e6, "compile_s": compile_s, "step_s": step_s,
            "pairs_per_s": config.batch_size / step_s, "memory_bytes": device_bytes(compiled)}


def preset_config(module, preset: str, batch_size: int, dtype: str | None):
    """A method's preset with the benchmark's batch size, dtype and a fixed vocabulary."""
    config = module.get_config(preset)
    config.batch_size = batch_size
    config.init.image = config.init.text = ""   # random weights cost the same (no folder here)
    if dtype:
        config.model.dtype = dtype
    if config.model.text.vocab_size <= 0:
        config.model.text.vocab_size = VOCAB[preset.split(",")[0]]
    return config


def benchmark(preset: str, batch_size: int, steps: int, dtype: str | None,
              token_keep_fraction: float = 1.0) -> dict[str, float]:
    config = preset_config(clip, preset, batch_size, dtype)
    config.model.image.token_keep_fraction = token_keep_fraction
    return benchmark_config(config, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="demo,paper")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="0 = 128 for demo, 8 for paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16"])
    parser.add_argument("--token_keep_fractions", default="1.0",
                        help="FLIP: comma-separated config.model.image.token_keep_fraction "
                             "values, each benchmarked")
    args = parser.parse_args()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"{'preset':8} {'dtype':9} {'batch':>5} {'keep':>5} {'params':>8} {'compile':>9} "
          f"{'step':>9} {'pairs/s':>9}")
    for preset in args.presets.split(","):
        batch = args.batch_size or {"demo": 128, "paper": 8, "tiny": 16}[preset]
        for keep in map(float, args.token_keep_fractions.split(",")):
            r = benchmark(preset, batch, args.steps, args.dtype, keep)
            dtype = args.dtype or clip.get_config(preset).model.dtype
            print(f"{preset:8} {dtype:9} {batch:5d} {keep:5.2f} {r['params_M']:7.1f}M "
                  f"{r['compile_s']:8.1f}s {r['step_s'] * 1000:7.0f}ms "
                  f"{r['pairs_per_s']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
