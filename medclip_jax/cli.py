"""Shared entry-point plumbing: multi-process start-up and one-line user errors."""

import sys
from typing import Callable

import jax
from absl import app, flags, logging

from medclip_jax import flag_errors, peer_watch, supervisor
from medclip_jax.errors import UserError

flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-process runs started by hand.")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() with cluster auto-detection "
                  "(SLURM, TPU pods, Open MPI).")
flags.DEFINE_integer("peer_timeout_s", 60,
                     "Multi-process runs: a process that shows no sign of life for this many "
                     "seconds is lost; the others stop with one line naming it (exit 75).",
                     lower_bound=5)

FLAGS = flags.FLAGS


def quiet_library_logs() -> None:
    """Orbax and grain log every step at INFO; keep stdout for our own lines unless asked."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def maybe_initialize_distributed() -> None:
    """Joins the processes of a multi-host job before any JAX computation."""
    quiet_library_logs()
    heartbeat = peer_watch.jax_heartbeat_timeout(FLAGS.peer_timeout_s)
    if FLAGS.coordinator_address:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id,
                                   heartbeat_timeout_seconds=heartbeat)
    elif FLAGS.distributed:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
    peer_watch.start(FLAGS.peer_timeout_s)


#: Exit code of a run stopped by Ctrl-C outside the training loop (128 + SIGINT).
INTERRUPTED_EXIT_CODE = 130


def run_user_main(main: Callable[[], None]) -> None:
    """Runs `main`; a UserError becomes one line on stderr and exit code 2, a Ctrl-C that
    nothing caught (start-up, evaluation) one line and exit code 130, and in a multi-process
    run an error from a lost peer one line naming it (`peer_watch`, exit code 75)."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        peer_watch.exit_now(2)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); nothing was saved by this command after its last "
              "checkpoint", file=sys.stderr, flush=True)
        peer_watch.exit_now(INTERRUPTED_EXIT_CODE)
    except Exception as e:  # multi-process: a lost peer, named in one line
        peer_watch.exit_on_error(e)
        raise


def run_app(main: Callable[[list[str]], None], default_config: str | None = None) -> None:
    """`absl.app.run` with command-line config mistakes as one line and exit code 2
    (`flag_errors.parse_flags`); a multi-process run goes on in a supervised child process
    (`supervisor`). `default_config`: the ``--config`` used when none is given."""
    supervisor.supervise_if_multiprocess()
    if default_config is not None:
        # config_flags reads the overrides from sys.argv itself.
        sys.argv[:] = flag_errors.with_default_config(sys.argv, "config", default_config)
    app.run(main, flags_parser=flag_errors.parse_flags)
