"""Ray Train: the training loop on data-parallel workers (TorchTrainer, Ray Train V2).

`fit_distributed` runs `loop.train_loop` as `train_loop_per_worker` on `scaling.num_workers`
workers (gloo on CPU, nccl on GPU). The dataset travels once through the object store. Each worker
wraps the model in DDP, so one backward of L_ext all-reduces one gradient per step. Every epoch
rank 0 reports a Checkpoint (model, optimizer, every rank's sampler RNG state, the history so far);
Ray's FailureConfig restarts a failed worker group from the latest one, and a rerun with the same
run name resumes from it. The run's Ray files live in the run folder `<storage.path>/<name>/`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from gerne_ray.errors import GerneError
from gerne_ray.loop import CHECKPOINT_FILE, Prepared, WorkerContext, load_state, save_state, train_loop
from gerne_ray.results import epoch_metrics
from gerne_ray.spec import JobSpec


class RayTrainContext(WorkerContext):
    """A Ray Train worker: DDP model, torch.distributed collectives, checkpoints via ray.train.report."""

    def __init__(self, metric: str = "val_gba") -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        super().__init__(device=ray.train.torch.get_device())
        self.metric = metric
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.node_id = ray.get_runtime_context().get_node_id()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to this worker's device and wrap in DDP (more than one worker)."""
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over workers (on the device the backend needs), returned on the CPU."""
        if self.world_size == 1:
            return tensor
        on_device = tensor.to(self.device)
        dist.all_reduce(on_device)
        return on_device.cpu()

    def all_gather(self, obj: object) -> list:
        """Every worker's obj, in rank order."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def load_checkpoint(self) -> dict | None:
        """The latest reported checkpoint's state (after a restart or on resume), or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return None if checkpoint is None else read_checkpoint(checkpoint)

    def save(self, row: dict, state: dict) -> None:
        """Report the epoch's scalar metrics to Ray, with rank 0's checkpoint."""
        import ray.train

        metrics = epoch_metrics(row, state["history"], self.metric)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if self.rank == 0:
                save_state(Path(folder) / CHECKPOINT_FILE, state)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point on every worker: the one training loop with a RayTrainContext."""
    import ray

    spec = JobSpec.model_validate(config["spec"])
    prepared = ray.get(config["prepared"])
    train_loop(spec, prepared, RayTrainContext(spec.search.metric))


def ensure_ray(spec: JobSpec) -> None:
    """Connect to RAY_ADDRESS or the running cluster, or start an embedded local one; check it fits."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # A local cluster started here for in-process trials skips the dashboard's modules (about a
        # fifth of Ray's start-up CPU time); Ray Train trials need them: their placement groups are
        # freed by an actor that asks the dashboard (ray issue 54305). Ignored when connecting.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                 include_dashboard=spec.scaling.distributed)
    if address:  # a remote, possibly autoscaling cluster: its size now says nothing
        return
    s = spec.scaling
    resources = ray.cluster_resources()
    need_cpu = s.num_workers * s.worker_cpus
    if need_cpu > resources.get("CPU", 0):
        raise GerneError(
            f"scaling.num_workers: {s.num_workers} workers x {s.worker_cpus:g} CPUs need {need_cpu:g} "
            f"CPUs but this Ray cluster has {resources.get('CPU', 0):g}; lower scaling.num_workers or "
            "scaling.cpus_per_worker, or submit to a larger cluster (RAY_ADDRESS)"
        )
    if s.use_gpu and resources.get("GPU", 0) == 0:
        raise GerneError(
            "scaling.use_gpu: this Ray cluster has no GPU; set use_gpu: false or use a GPU cluster"
        )


def fit_distributed(spec: JobSpec, prepared: Prepared, callbacks: list | None = None) -> list[dict]:
    """Run the loop on Ray Train workers; return the history from the latest checkpoint.

    The Train run is `<storage.path>/<name>/`; `callbacks` go to its RunConfig (inside a Tune trial:
    ray.tune.integration.ray_train.TuneReportCallback).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(spec)
    s = spec.scaling
    per_worker = {"CPU": s.worker_cpus}
    if s.use_gpu:
        per_worker["GPU"] = s.gpus_per_worker if s.gpus_per_worker is not None else 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "prepared": ray.put(prepared)},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=per_worker,
            placement_strategy=s.placement_strategy,
        ),
        run_config=RunConfig(
            name=spec.name,
            storage_path=spec.folder.ray_storage,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps worker errors; a user error inside stays one line
        cause = user_error(err)
        if cause is not None:
            raise cause from None
        raise
    if result.checkpoint is None:
        return []
    return list(read_checkpoint(result.checkpoint)["history"])


def read_checkpoint(checkpoint) -> dict:
    """The state stored in a Ray (Train or Tune) Checkpoint written by this package."""
    with checkpoint.as_directory() as folder:
        return load_state(Path(folder) / CHECKPOINT_FILE)


def user_error(err: BaseException) -> GerneError | None:
    """The GerneError a worker raised, found in the chain of Ray's wrapping exceptions."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, GerneError):
            return e
        text = str(e)
        if "GerneError: " in text:
            return GerneError(text.rsplit("GerneError: ", 1)[1].splitlines()[0])
        stack += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    return None


__all__ = ["fit_distributed", "train_loop_per_worker", "RayTrainContext", "ensure_ray"]
