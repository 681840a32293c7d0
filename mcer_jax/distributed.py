"""Start-up of JAX's multi-process runtime for TPU pods and GPU clusters."""

import logging

import jax
import ml_collections


def initialize(distributed_config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the config asks for it.

  On a cloud TPU VM every setting is read from the environment, so an empty
  `coordinator_address` is enough. Elsewhere (GPU clusters, several processes
  on one machine) give the coordinator's `host:port`, the number of processes
  and this process's id.
  """
  if not distributed_config.initialize:
    return
  if distributed_config.coordinator_address:
    if distributed_config.num_processes < 1 or distributed_config.process_id < 0:
      raise ValueError(
          "config.distributed.coordinator_address is set, so config.distributed.num_processes "
          f"(found {distributed_config.num_processes}) and config.distributed.process_id "
          f"(found {distributed_config.process_id}) must be set too."
      )
    jax.distributed.initialize(
        coordinator_address=distributed_config.coordinator_address,
        num_processes=distributed_config.num_processes,
        process_id=distributed_config.process_id,
    )
  else:
    jax.distributed.initialize()
  logging.info(
      "Process %d of %d, %d local devices of %d.",
      jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
  )
