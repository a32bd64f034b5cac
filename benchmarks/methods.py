"""Every method's train step against CLIP's, and SigLIP's loss memory, global vs ring.

    python benchmarks/methods.py                         # demo and ViT-B/16 presets
    python benchmarks/methods.py --presets demo --methods clip,slip,filip --steps 3
    python benchmarks/methods.py --devices 0             # the real devices (GPU/TPU host)
    python benchmarks/methods.py --devices 1 --presets paper --siglip_batch 0   # CPU, 24 GB

On fake CPU devices every device holds a replicated copy of the params and Adam state: the
paper preset (ViT-B/16) needs about 4 GB per fake device, so use ``--devices 1`` for it on a
small machine.

Part 1, per preset: for each method config (its own heads, views and loss; random inputs of the
shapes its pipeline produces), compile time, median step time and XLA's per-device memory
estimate (arguments + outputs + temporaries of the compiled step), each also relative to CLIP.
Part 2: per-device memory of jit(value_and_grad(SigLIP loss)) at a global batch of 8192
(``--siglip_batch``) on the mesh of all devices (8 fake CPU devices by default), global vs ring.
"""

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import siglip_loss_memory  # noqa: E402

if __name__ == "__main__":
    siglip_loss_memory._set_fake_devices(sys.argv[1:])

import jax  # noqa: E402

from benchmarks.train_step import benchmark_config, preset_config  # noqa: E402
from medclip_jax import methods, sharding  # noqa: E402

MIB = 2 ** 20
# label -> (config module, config argument suffix, loss overrides): every method of the
# registry and its variants (siglip_ring, lit).
METHODS = methods.runs()
DEFAULT_BATCH = {"demo": 128, "paper": 8}


def method_config(name: str, preset: str, batch_size: int, dtype: str | None):
    module, suffix, loss_overrides = METHODS[name]
    config = preset_config(importlib.import_module(f"configs.{module}"), preset + suffix,
                           batch_size, dtype)
    config.loss.update(loss_overrides)
    return config


def methods_table(preset: str, names: list[str], batch_size: int, steps: int,
                  dtype: str | None) -> None:
    print(f"\n## {preset} preset, global batch {batch_size}, {jax.device_count()} devices")
    print(f"{'method':12} {'compile':>9} {'step':>9} {'memory/dev':>11} "
          f"{'compile':>8} {'step':>6} {'memory':>7}   (last three relative to clip)")
    base = None
    for name in names:
        r = benchmark_config(method_config(name, preset, batch_size, dtype), steps)
        if name == "clip":
            base = r
        rel = (lambda k: f"{r[k] / base[k]:.2f}x") if base else (lambda k: "-")
        print(f"{name:12} {r['compile_s']:8.1f}s {r['step_s'] * 1000:7.0f}ms "
              f"{r['memory_bytes'] / MIB:9.1f}Mi {rel('compile_s'):>8} {rel('step_s'):>6} "
              f"{rel('memory_bytes'):>7}", flush=True)


def siglip_table(global_batch: int, embed_dim: int) -> None:
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    print(f"\n## SigLIP loss, global batch {global_batch}, embed dim {embed_dim}, "
          f"{jax.device_count()} devices (per-device MiB from compiled memory analysis)")
    print(f"{'impl':8} {'temp':>9} {'total':>9}")
    for implementation in ("global", "ring"):
        r = siglip_loss_memory.loss_memory(implementation, global_batch, embed_dim, mesh)
        print(f"{implementation:8} {r['temp_bytes'] / MIB:9.1f} {r['total_bytes'] / MIB:9.1f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8,
                        help="fake CPU devices (0 = use the real devices)")
    parser.add_argument("--presets", default="demo,paper")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch_size", type=int, default=0, help="0 = 128 demo, 8 paper")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16"])
    parser.add_argument("--siglip_batch", type=int, default=8192)
    parser.add_argument("--siglip_dim", type=int, default=512)
    args = parser.parse_args()
    names = args.methods.split(",")
    if "clip" in names:  # The reference row comes first.
        names = ["clip"] + [n for n in names if n != "clip"]
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    for preset in args.presets.split(","):
        methods_table(preset, names, args.batch_size or DEFAULT_BATCH[preset], args.steps,
                      args.dtype)
    if args.siglip_batch > 0:
        siglip_table(args.siglip_batch, args.siglip_dim)


if __name__ == "__main__":
    main()
