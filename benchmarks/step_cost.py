"""Train-step cost without running it: XLA's FLOPs and per-device memory of the compiled step,
next to an analytic count of the towers' matmul FLOPs, per method and lock setting.

    python benchmarks/step_cost.py                                  # demo: every method, lock none/tower
    python benchmarks/step_cost.py --presets paper --methods clip --batch_size 8
    for n in 8 64 256; do                                           # memory falls with fsdp
      python benchmarks/step_cost.py --presets paper --methods clip --locks none \
          --devices $n --fsdp $n --batch_size $n
    done

The analytic count is 2 FLOPs per multiply-add of every matmul of the two towers (patch
embedding, attention projections, attention scores and values, MLPs), the projection heads and
CLIP's [B, B] logits; a trainable part costs 3x its forward pass (forward, input and weight
gradients), a trainable part fed only by frozen ones 2x (no input gradient), a frozen part 1x.
XLA's count adds the elementwise ops (norms, softmax, activations, the optimizer), so the ratio
sits a little above 1 for CLIP; methods with more views or token-level losses show their extra
cost in it. A locked tower that still cost its backward pass would show as lock=tower costing
as much as lock=none.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import siglip_loss_memory  # noqa: E402

if __name__ == "__main__":
    siglip_loss_memory._set_fake_devices(sys.argv[1:])

import jax  # noqa: E402

from benchmarks.methods import DEFAULT_BATCH, METHODS, method_config  # noqa: E402
from benchmarks.train_step import compiled_step, device_bytes  # noqa: E402

MIB = 2 ** 20


def encoder_flops(tokens: int, width: int, mlp_dim: int, depth: int) -> float:
    """Forward matmul FLOPs of `depth` transformer blocks over `tokens` tokens."""
    per_token = 2 * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens * width
    return float(depth * tokens * per_token)


def projection_flops(model, width: int, text: bool) -> float:
    kind = (model.get("text_projection") or model.projection) if text else model.projection
    if kind == "mlp":
        return 2.0 * (width * model.projection_hidden_dim + model.projection_hidden_dim
                      * model.embed_dim)
    return 2.0 * width * model.embed_dim


def analytic_step_flops(config, lock: str) -> float:
    """The module docstring's count for one step of the global batch."""
    model, batch = config.model, config.batch_size
    image, text = model.image, model.text
    patches = (image.image_size // image.patch_size) ** 2
    patch_embed = 2.0 * patches * image.patch_size ** 2 * 3 * image.width
    image_tower = patch_embed + encoder_flops(patches + 1, image.width, image.mlp_dim,
                                              image.depth)
    text_tower = encoder_flops(text.max_len, text.width, text.mlp_dim, text.depth)
    image_proj = projection_flops(model, image.width, text=False)
    text_proj = projection_flops(model, text.width, text=True)
    loss = 2.0 * batch * model.embed_dim
    if lock in ("none", ""):
        per_pair = 3 * (image_tower + image_proj + text_tower + text_proj + loss)
    elif lock == "tower":
        per_pair = image_tower + 2 * image_proj + 3 * (text_tower + text_proj + loss)
    elif lock == "all":
        per_pair = image_tower + image_proj + 3 * (text_tower + text_proj + loss)
    else:  # the first k blocks (and the patch embedding) frozen
        k = int(lock)
        block = encoder_flops(patches + 1, image.width, image.mlp_dim, 1)
        trained = image.depth - k
        # The first trained block skips only its input's gradient through the q/k/v kernels.
        first = 3 * block - 2 * 3 * image.width ** 2 * (patches + 1)
        image_cost = (patch_embed + k * block + (first if trained else 0)
                      + 3 * block * max(trained - 1, 0))
        per_pair = image_cost + 3 * (image_proj + text_tower + text_proj + loss)
    return per_pair * batch


def step_cost(name: str, preset: str, lock: str, batch_size: int, mesh_sizes: dict,
              dtype: str | None, token_keep_fraction: float = 1.0) -> dict[str, float]:
    config = method_config(name, f"{preset}{'' if lock == 'none' else f',lock={lock}'}",
                           batch_size, dtype)
    config.model.image.token_keep_fraction = token_keep_fraction
    config.mesh.data, config.mesh.fsdp = mesh_sizes["data"], mesh_sizes["fsdp"]
    mesh, _, _, compiled, _ = compiled_step(config)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA counts one device's share of the SPMD program: the step's total is that times the
    # device count.
    return {"flops": float(cost["flops"]) * mesh.size,
            "analytic": analytic_step_flops(config, lock),
            "memory_bytes": device_bytes(compiled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8,
                        help="fake CPU devices (0 = use the real devices)")
    parser.add_argument("--fsdp", type=int, default=1, help="mesh fsdp size (data = the rest)")
    parser.add_argument("--presets", default="demo")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--locks", default="none,tower")
    parser.add_argument("--batch_size", type=int, default=0, help="0 = 128 demo, 8 paper")
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16"])
    parser.add_argument("--token_keep_fraction", type=float, default=1.0,
                        help="FLIP: config.model.image.token_keep_fraction (the analytic "
                             "count assumes 1.0)")
    args = parser.parse_args()
    mesh_sizes = {"data": -1, "fsdp": args.fsdp}
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, mesh {mesh_sizes}")
    print(f"{'preset':7} {'method':12} {'lock':6} {'batch':>5} {'XLA GFLOP':>10} "
          f"{'analytic':>9} {'ratio':>6} {'vs none':>8} {'MiB/dev':>9}")
    for preset in args.presets.split(","):
        batch = args.batch_size or DEFAULT_BATCH[preset]
        for name in args.methods.split(","):
            unlocked = None
            for lock in args.locks.split(","):
                if name == "lit" and lock != "tower":
                    continue  # LiT is lock=tower by definition
                r = step_cost(name, preset, lock, batch, mesh_sizes, args.dtype,
                              args.token_keep_fraction)
                unlocked = r["flops"] if lock == "none" else unlocked
                relative = f"{r['flops'] / unlocked:.2f}x" if unlocked else "-"
                print(f"{preset:7} {name:12} {lock:6} {batch:5d} {r['flops'] / 1e9:10.2f} "
                      f"{r['analytic'] / 1e9:9.2f} {r['flops'] / r['analytic']:6.2f} "
                      f"{relative:>8} {r['memory_bytes'] / MIB:9.1f}", flush=True)


if __name__ == "__main__":
    main()
