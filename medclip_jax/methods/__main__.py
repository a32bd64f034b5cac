"""``python -m medclip_jax.methods [--configs]``: the registered method names, one line, space
separated (``--configs``: the config files to train, method variants with a file of their own
included), for shell scripts."""

import sys

from medclip_jax import methods

if __name__ == "__main__":
    if sys.argv[1:] == ["--configs"]:
        files = dict.fromkeys(config for config, suffix, loss in methods.runs().values()
                              if not loss)
        print(" ".join(files))
    elif sys.argv[1:]:
        print("error: usage: python -m medclip_jax.methods [--configs]", file=sys.stderr)
        sys.exit(2)
    else:
        print(" ".join(methods.names()))
