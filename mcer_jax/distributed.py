"""Start-up of JAX's multi-process runtime for TPU pods and GPU clusters.

After `initialize`, `jax.pmap` still runs on the local devices of each
process, but its named axis spans every device of every process. So `lax.psum`
and `lax.all_gather` in the train step combine all devices, while each process
feeds only its own rows of every global batch (`data.pipeline`).
"""

import logging

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils


def initialize(distributed_config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when `config.distributed.initialize` is True.

  With `coordinator_address` empty, JAX reads every setting from the
  environment: cloud TPU VMs and pod slices, SLURM, Open MPI and Kubernetes
  are recognised. Otherwise (GPU clusters, several processes on one machine)
  give the coordinator's `host:port`, the number of processes and this
  process's id; JAX then detects nothing, and each process uses all the
  devices it can see.

  Raises:
    ValueError: the settings are incomplete or inconsistent.
  """
  if not distributed_config.initialize:
    return
  # Collectives between CPU devices of different processes (tests, CPU-only
  # clusters) run over gloo. gloo is the default of jax 0.10.2, and setting it
  # here keeps multi-process CPU runs working if that default changes. It must
  # be set before `initialize`, which creates the CPU client.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if distributed_config.coordinator_address:
    num_processes = distributed_config.num_processes
    process_id = distributed_config.process_id
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
          "config.distributed.coordinator_address is set, so config.distributed.num_processes must be at "
          "least 1 and config.distributed.process_id in [0, num_processes); found num_processes="
          f"{num_processes} and process_id={process_id}. Give every process the same num_processes and "
          "its own process_id, 0 on the coordinator's host."
      )
    # "deactivate": explicit settings win. Otherwise JAX's SLURM detection would
    # still run to fill in local_device_ids and limit each process to the one
    # GPU numbered SLURM_LOCALID.
    jax.distributed.initialize(
        coordinator_address=distributed_config.coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        cluster_detection_method="deactivate",
    )
  else:
    try:
      jax.distributed.initialize()
    except ValueError as error:
      raise ValueError(
          "config.distributed.initialize is True and config.distributed.coordinator_address is empty, but "
          f"JAX found no cluster settings in the environment ({error}). Outside cloud TPU, SLURM, Open MPI "
          "and Kubernetes, set config.distributed.coordinator_address (host:port of process 0), "
          "num_processes and process_id."
      ) from error
  logging.info(
      "Process %d of %d, %d local devices of %d.",
      jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
  )
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    _connect_cpu_collectives()


def _connect_cpu_collectives() -> None:
  """Opens the gloo connections of the run while all processes are at the same point.

  The first collective on a group of CPU devices connects the processes
  through the coordinator, and in jaxlib 0.10.2 that connection fails when
  another process arrives more than 30 s later. After a long compilation on a
  loaded machine, processes can be that far apart. Once connected, the same
  group waited 45 s without failing in a two-process check. So this runs one
  collective on each group that training uses: every device (the pmapped
  steps) and the first device of each process
  (`multihost_utils.process_allgather`, Orbax's barriers).
  `jax.distributed.initialize` has just returned on every process, so they
  arrive together.
  """
  ones = np.ones(jax.local_device_count(), np.float32)
  total = jax.pmap(lambda x: jax.lax.psum(x, "devices"), axis_name="devices")(ones)
  if int(np.asarray(total)[0]) != jax.device_count():
    raise RuntimeError(
        f"a psum of ones over all {jax.device_count()} devices returned {np.asarray(total)[0]}, so the "
        "collectives between processes are broken"
    )
  multihost_utils.sync_global_devices("mcer_jax.distributed.initialize")
