"""SigLIP loss memory: per-device bytes of jit(value_and_grad(loss)), global vs ring.

    python benchmarks/siglip_loss_memory.py            # batch 8192, dim 512, 8 fake devices
    python benchmarks/siglip_loss_memory.py --global_batch 4096 --mesh data=2,fsdp=4
    python benchmarks/siglip_loss_memory.py --devices 0   # the real devices, no fakes

Only compiles (no run): the numbers are XLA's `memory_analysis()` of the SPMD-partitioned
executable, i.e. one device's temp + argument + output buffers. The [N, N] float32 logits are
N^2 * 4 bytes (256 MiB at N = 8192); the ring's live logits are (N / D)^2 * 4 bytes.
"""

import argparse
import os
import sys
import time


def _set_fake_devices(argv: list[str]) -> None:
    """Fake CPU devices must be requested before JAX initialises its backend."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--devices", type=int, default=8)
    count = parser.parse_known_args(argv)[0].devices
    if count > 0:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax
        jax.config.update("jax_num_cpu_devices", count)


if __name__ == "__main__":
    _set_fake_devices(sys.argv[1:])

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from medclip_jax import sharding  # noqa: E402
from medclip_jax.losses.siglip import siglip_loss, siglip_ring_loss  # noqa: E402

MIB = 2 ** 20


def loss_memory(implementation: str, global_batch: int, embed_dim: int, mesh: Mesh
                ) -> dict[str, float]:
    """Compiles value_and_grad of the loss (w.r.t. both embeddings, scale and bias) for
    batch-sharded float32 inputs; returns per-device bytes and the compile time in seconds."""
    def loss(image, text, scale, bias):
        if implementation == "ring":
            return siglip_ring_loss(image, text, scale, bias, mesh)[0]
        return siglip_loss(image, text, scale, bias)[0]

    batch = NamedSharding(mesh, P(sharding.BATCH_AXES))
    scalar = NamedSharding(mesh, P())
    emb = jax.ShapeDtypeStruct((global_batch, embed_dim), jnp.float32, sharding=batch)
    one = jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = fn.lower(emb, emb, one, one).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    temp, args, out = (stats.temp_size_in_bytes, stats.argument_size_in_bytes,
                       stats.output_size_in_bytes)
    return {"temp_bytes": temp, "argument_bytes": args, "output_bytes": out,
            "total_bytes": temp + args + out, "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--global_batch", type=int, default=8192)
    parser.add_argument("--embed_dim", type=int, default=512)
    parser.add_argument("--mesh", default="data=-1,fsdp=1", help="axis sizes, e.g. data=2,fsdp=4")
    parser.add_argument("--devices", type=int, default=8,
                        help="fake CPU devices (0 = use the real devices)")
    parser.add_argument("--implementations", default="global,ring")
    args = parser.parse_args()
    axes = {k: int(v) for k, v in (item.split("=") for item in args.mesh.split(","))}
    mesh = sharding.make_mesh(axes)
    sharding.check_batch_size(args.global_batch, mesh, "--global_batch")
    n, d = args.global_batch, sharding.data_parallel_size(mesh)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}  mesh: "
          f"{dict(mesh.shape)}  global batch {n} (local {n // d})  embed dim {args.embed_dim}")
    print(f"reference: N x N logits {n * n * 4 / MIB:.1f} MiB, b x N {n // d * n * 4 / MIB:.1f} "
          f"MiB, b x b {(n // d) ** 2 * 4 / MIB:.2f} MiB, N x E {n * args.embed_dim * 4 / MIB:.1f} "
          f"MiB (float32)")
    print(f"{'impl':7} {'temp':>12} {'args':>10} {'output':>10} {'total':>12} {'compile':>8}  "
          f"(MiB per device)")
    for implementation in args.implementations.split(","):
        r = loss_memory(implementation, n, args.embed_dim, mesh)
        print(f"{implementation:7} {r['temp_bytes'] / MIB:12.2f} {r['argument_bytes'] / MIB:10.2f} "
              f"{r['output_bytes'] / MIB:10.2f} {r['total_bytes'] / MIB:12.2f} "
              f"{r['compile_s']:7.1f}s", flush=True)


if __name__ == "__main__":
    main()
