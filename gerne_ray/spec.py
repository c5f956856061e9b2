"""Job spec models (pydantic v2): the user's contract. Examples live in jobs/.

Unknown keys are rejected everywhere. `load_spec` turns a path, dict or JobSpec (plus
`key.path=value` overrides) into a validated JobSpec, and every problem into one GerneError line
that names the field and the fix.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from gerne_ray import methods
from gerne_ray.errors import GerneError
from gerne_ray.methods.base import MethodParams

MAX_SPEC_BYTES = 1_000_000
MAX_PROBLEMS = 5  # validation problems shown in the error line; the rest are counted ("and N more")
MAX_SHOWN_CHARS = 100  # a key path or value quoted in an error is cut to this many characters
# Upper limits of sizes and seeds: generous, so that no real job meets them, and low enough that a
# typo (an extra digit, 2**70) fails in validation rather than deep in Optuna, numpy or an allocator.
MAX_SEED = 2**32 - 1  # numpy's RandomState and Optuna's TPESampler take seeds in [0, 2**32)
MAX_HIDDEN = 16_384  # mlp width: 2 x 16384^2 weights are 2.1 GB in float32 (x4 with grads and momentum)
MAX_EPOCHS = 100_000
MAX_STEPS_PER_EPOCH = 100_000  # an epoch's batches are drawn up front: memory grows with the steps
MAX_BATCH_PER_CLASS = 16_384  # B per class: a step holds 2 x classes x B inputs
MAX_EVAL_BATCH = 65_536
MAX_TRIALS = 100_000
MAX_FINAL_SEEDS = 100
MAX_LOADER_WORKERS = 256  # DataLoader processes per training worker
MAX_TOKENS = 8_192  # 16x BERT's 512 positions; attention memory grows with its square
SPEC_VERSIONS = (1,)  # the spec format versions this release reads (`version:` in a spec; 1 when absent)
VALIDATION_METRICS = (
    "val_gba", "val_wga", "val_avg", "val_weighted_avg", "val_class_balanced", "val_worst_class",
    "val_minority",
)

Unit = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSpec(_Strict):
    """Which dataset, where it lives, and how generated datasets are made."""

    dataset: str = Field("colored_digits", description="the dataset's registry name (README: Datasets)")
    root: str | None = Field(
        None, description="folder of an on-disk dataset (parquet: its manifest file); must exist when given"
    )
    conflict_ratio: float = Field(
        0.02, ge=0, lt=1, description="share of bias-conflicting training samples in generated datasets"
    )
    attributes: Literal["known", "unknown"] = Field(
        "known", description="unknown: train on pseudo-groups from a biased model (no attribute labels read)"
    )
    attribute_labels: Literal["train_val", "val_only", "none"] = Field(
        "train_val", description="with unknown attributes: which true attribute labels exist"
    )
    stage1_select: Literal["val_class_balanced", "last"] = Field(
        "val_class_balanced", description="with unknown attributes: which epoch of the biased model ranks "
        "the samples: the best by validation class-balanced accuracy (the paper's rule; right when the "
        "validation split is biased like training), or the last one (when the validation split is "
        "attribute-balanced, e.g. colored_mnist, where that rule picks the least biased epoch)"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of generated data; fixed across training seeds "
                      "(below 2**32, as numpy's and Optuna's seeds)")
    num_workers: int = Field(0, ge=0, le=MAX_LOADER_WORKERS, description="DataLoader worker processes "
                             f"reading files (0: none; at most {MAX_LOADER_WORKERS} per training worker)")
    target: str | None = Field(None, description="celeba, parquet: the column used as the class y")
    attribute: str | None = Field(None, description="celeba, parquet: the column used as the attribute a")
    tokenizer: str = Field("bert-base-uncased", description="text datasets: the Hugging Face tokenizer")
    max_length: int = Field(220, gt=0, le=MAX_TOKENS, description="text datasets: tokens per sample "
                            f"(padded/truncated; at most {MAX_TOKENS}, 16x BERT's 512 positions)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from gerne_ray.data.registry import DATASETS

        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; use one of: {', '.join(sorted(DATASETS))}")
        return name


class ModelSpec(_Strict):
    """The network: `mlp`, `cnn`, `resnet18` or `resnet50`."""

    arch: Literal["mlp", "cnn", "resnet18", "resnet50", "bert"] = Field(
        "mlp", description="mlp (3 hidden layers), cnn (small, BatchNorm), resnet18, resnet50, bert (text)"
    )
    pretrained: bool = Field(
        False, description="ImageNet weights for ResNets (torchvision), model.name's weights for bert"
    )
    hidden: int = Field(100, gt=0, le=MAX_HIDDEN, description="hidden width of the mlp (and of bert when "
                        f"not pretrained); at most {MAX_HIDDEN}: an mlp that wide has 537M weights (2.1 GB)")
    name: str = Field("bert-base-uncased", description="bert: the Hugging Face model whose weights to load")


class OptimSpec(_Strict):
    """Optimiser and schedule; `batch_size_per_class` is B, per batch (GERNE draws two)."""

    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw")
    lr: Positive = Field(0.1, description="learning rate")
    weight_decay: float = Field(0.01, ge=0, description="weight decay (decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd's momentum")
    epochs: int = Field(20, gt=0, le=MAX_EPOCHS, description="epochs; validation and test are evaluated "
                        f"after each (at most {MAX_EPOCHS})")
    batch_size_per_class: int = Field(
        32, gt=0, le=MAX_BATCH_PER_CLASS,
        description="B: samples per class in each batch (GERNE draws two batches; at most "
        f"{MAX_BATCH_PER_CLASS})"
    )
    steps_per_epoch: int | None = Field(
        None, gt=0, le=MAX_STEPS_PER_EPOCH, description="default: ceil(training samples / (classes x "
        f"batch_size_per_class)); at most {MAX_STEPS_PER_EPOCH}, as an epoch's batches are drawn up front"
    )
    eval_batch_size: int = Field(1024, gt=0, le=MAX_EVAL_BATCH, description="samples per forward pass when "
                                 f"evaluating (at most {MAX_EVAL_BATCH})")
    amp: Literal["off", "bf16"] = Field("off", description="bf16 autocast (mixed precision), for GPUs")


class Range(_Strict):
    """A continuous range [low, high], drawn uniformly."""

    low: Unit = Field(description="the range's low end, in (0, 1]")
    high: Unit = Field(description="the range's high end, in (0, 1], at least low")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"write the range with low <= high; got low {self.low}, high {self.high}")
        return self


# search.space.t's default: log-uniform over the minority shares the field's benchmarks have (Colored
# MNIST and Corrupted CIFAR-10 0.5-5% conflicting, Waterbirds about 5% of a class; the paper's Colored
# MNIST ablation t from 0.05% to 1%); a 16-trial search puts about half its draws below 1%
T_RANGE = (5e-4, 0.1)


class SearchSpaceSpec(_Strict):
    """What a search varies besides beta (used by `gerne-ray tune`)."""

    c: Annotated[list[Unit], Field(min_length=1)] | Range = Field(
        default_factory=lambda: [0.5], description="a set of values [0.5, 1.0] or a range {low, high}"
    )
    lr: tuple[Positive, Positive] | None = Field(
        None, description="[low, high]: the learning rate searched log-uniformly; null: optim.lr"
    )
    weight_decay: tuple[Positive, Positive] | None = Field(
        None, description="[low, high]: the weight decay searched log-uniformly; null: optim.weight_decay"
    )
    t: tuple[Annotated[float, Field(gt=0, lt=0.5)], Annotated[float, Field(gt=0, le=0.5)]] = Field(
        T_RANGE, description="unknown attributes: the pseudo-group threshold's range [low, high], drawn "
        "log-uniformly (the low end raised so every class gets a pseudo-minority sample)"
    )
    methods: dict[str, dict[str, tuple[float, float]]] = Field(
        default_factory=dict, description="the ranges of methods' own hyperparameters, by method name, e.g. "
        "{groupdro: {eta: [0.001, 0.1]}, jtt: {lambda_up: [2, 50]}}: [low, high] replaces that method's "
        "default range (`gerne-ray methods` lists them); a method other than method.name's ranges serve "
        "`gerne-ray compare`"
    )

    @field_validator("lr", "weight_decay", "t")
    @classmethod
    def _ordered(cls, pair: tuple[float, float] | None) -> tuple[float, float] | None:
        if pair is not None and pair[0] > pair[1]:
            raise ValueError(f"write the range as [low, high]; got [{pair[0]}, {pair[1]}]")
        return pair


def param_problem(params: type[MethodParams], key: str, value: float) -> str | None:
    """Why a method's Params refuses `key: value` (its other fields at their defaults), or None."""
    try:
        params.model_validate({key: value})
    except ValidationError as err:
        mine = [e["msg"] for e in err.errors() if tuple(e["loc"]) == (key,)]
        return mine[0][0].lower() + mine[0][1:] if mine else None
    return None


Metric = Literal[VALIDATION_METRICS]  # type: ignore[valid-type]


class SelectSpec(_Strict):
    """Which trial of a multi-metric search's Pareto front is the best one (reported, and retrained with
    the final seeds): the largest `maximize` among the front's trials that meet every floor."""

    maximize: Metric | None = Field(  # type: ignore[valid-type]
        None, description="the metric maximised over the front's trials that meet the floors (null: the "
        "first of search.metric); ties go to the other metrics in search.metric's order, then to the "
        "earliest trial"
    )
    subject_to: dict[Metric, Annotated[float, Field(ge=0, le=1)]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="floors {metric: value}, e.g. {val_wga: 0.5}: only trials with "
        "metric >= value qualify; when none does, the trial closest to the floors (the smallest summed "
        "shortfall) is taken, and best.json's selection.note says so"
    )


class SearchSpec(_Strict):
    """Model selection and hyperparameter search."""

    metric: Metric | Annotated[list[Metric], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        "val_gba", description="the validation metric that selects the epoch and the trial (maximised); with "
        "data.attributes unknown the default is val_wga, or val_worst_class without attribute labels. A list "
        "[val_gba, val_wga] searches them all (multi-objective, scheduler fifo): the result is the trials' "
        "Pareto front, search.select picks the best of it, and each trial's epoch is its best by the first"
    )
    sampler: Literal["tpe", "nsga2"] = Field(
        "tpe", description="Optuna's sampler, seeded by seed: tpe (multi-objective TPE with several metrics) "
        "or nsga2 (NSGA-II, a population of max(4, min(50, num_samples // 4)) trials per generation)"
    )
    select: SelectSpec = Field(
        default_factory=SelectSpec, description="several metrics: which trial of the Pareto front is the "
        "best, e.g. {maximize: val_gba, subject_to: {val_wga: 0.5}}; default: the largest first metric"
    )
    num_samples: int = Field(16, gt=0, le=MAX_TRIALS, description=f"trials (at most {MAX_TRIALS})")
    bounds: Literal["simplified", "exact"] = Field(
        "simplified", description="simplified: beta in [-1, beta_max(c)]; exact: the exact interval"
    )
    # 0.01: the search reaches the paper's best beta on Colored MNIST 0.5% (1.2 of a bound at 1.2234,
    # lambda at 0.99 of lambda_max); benchmarks/results/near_bound_colored_mnist.md: no run diverged
    # there or on the bound
    margin: float = Field(
        0.01, ge=0, lt=1, description="share of the lambda interval's width kept away from each bound other "
        "than ERM's"
    )
    scheduler: Literal["asha", "fifo", "pbt"] = Field(
        "asha", description="asha (stops weak trials early, on epochs), fifo, or pbt (Population Based "
        "Training: a population of num_samples trials; every perturbation_interval epochs the worst copy the "
        "best ones' checkpoints and perturb lambda = c (beta + 1), c and lr inside their ranges)"
    )
    perturbation_interval: int = Field(
        4, gt=0, le=MAX_EPOCHS, description="pbt: epochs between a trial's exploit/explore steps"
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="pbt: the share of trials in the bottom quantile (they copy one of "
        "the same share at the top)"
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="pbt: the chance that a perturbed value is drawn afresh from its range "
        "instead of multiplied by 0.8 or 1.2 (c from a set: moved to a neighbour)"
    )
    synch: bool = Field(
        False, description="pbt: synchronous PBT: every trial waits at each perturbation point, then the "
        "bottom quantile copies the top one (every round exploits; costs a pause of every trial per round)"
    )
    grace_period: int = Field(2, gt=0, le=MAX_EPOCHS,
                              description="ASHA: epochs before a trial can be stopped")
    reduction_factor: int = Field(3, ge=2, description="ASHA keeps the top 1/reduction_factor at each rung")
    max_concurrent: int | None = Field(
        None, gt=0, description="trials at once; null: as many as the Ray cluster's CPUs (and GPUs) hold "
        "one trial's resources, counted when the search starts (best.json's search.max_concurrent); 1 "
        "makes a search reproducible"
    )
    # null is 5: a single-worker trial of a small model spends about as long on a checkpoint as on an
    # epoch's steps (benchmarks/results/search_overhead.md), so 5 cuts that to a fifth, while a killed
    # driver redoes at most 4 epochs; 1 where scaling.max_failures asks for restarts (lost nodes)
    checkpoint_every: int | None = Field(
        None, gt=0, le=MAX_EPOCHS, description="a single-worker trial checkpoints every this many epochs, "
        "its last epoch and each epoch where ASHA may stop it; the best epoch's weights ride along in each "
        "checkpoint; null: 5, or 1 with scaling.max_failures > 0 (multi-worker and PBT trials checkpoint "
        "every epoch)"
    )
    final_seeds: int = Field(
        0, ge=0, le=MAX_FINAL_SEEDS, description="retrain the best configuration with this many new seeds; "
        f"report mean and std (at most {MAX_FINAL_SEEDS})"
    )
    space: SearchSpaceSpec = Field(
        default_factory=SearchSpaceSpec, description="what a search varies besides beta"
    )

    @field_validator("metric")
    @classmethod
    def _each_metric_once(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            twice = sorted({m for m in value if value.count(m) > 1})
            if twice:
                raise ValueError(f"{', '.join(twice)} named twice; name each metric once")
            if len(value) == 1:
                return value[0]  # one metric, as a list: a single-objective search
        return value

    @property
    def metrics(self) -> list[str]:
        """search.metric as a list: one metric, or the objectives of a multi-objective search."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def primary(self) -> str:
        """The first metric: it selects each trial's epoch (and each final seed's)."""
        return self.metrics[0]


class ScalingSpec(_Strict):
    """Ray Train workers: how many, and what each one gets."""

    num_workers: int = Field(1, gt=0, description="Ray Train workers; 1 (without GPU) trains in-process")
    use_gpu: bool = Field(False, description="train on GPUs (Ray Train workers)")
    cpus_per_worker: Positive | None = Field(
        None, description="CPUs each worker (or in-process trial) reserves; Ray gives its torch as many "
        "threads. null: 1, except for a search of in-process trials run one at a time (search.max_concurrent "
        "1) on a one-node cluster: the node's CPUs (at most this machine's)"
    )
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs each worker reserves (null: 1 with use_gpu)"
    )
    max_failures: int = Field(0, ge=0, le=1000, description="restarts from the last checkpoint: of a "
                              "trial's worker group (Ray Train) and of a failed trial (Ray Tune), e.g. "
                              "after a lost node")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray's placement of the workers: SPREAD and STRICT_SPREAD use several nodes"
    )

    @property
    def worker_cpus(self) -> float:
        """cpus_per_worker, 1 where it is null (a search resolves null first: tuning.with_concurrency)."""
        return 1.0 if self.cpus_per_worker is None else self.cpus_per_worker

    @property
    def distributed(self) -> bool:
        """Whether a run needs Ray Train (more than one worker, or a GPU) rather than in-process."""
        return self.num_workers > 1 or self.use_gpu

    @property
    def multi_node(self) -> bool:
        """Whether the job asks for its workers on more than one node."""
        return self.num_workers > 1 and self.placement_strategy in ("SPREAD", "STRICT_SPREAD")


class StorageSpec(_Strict):
    """Where runs are written: `<path>/<name>/`, a local folder or a URI (s3://, gs://, file://, ...)."""

    path: str = Field(
        "runs", min_length=1, description="a local folder or a URI (s3://bucket/runs, gs://..., file://...)"
    )
    shared: bool = Field(
        False, description="the local path is on a file system every node of the cluster mounts (NFS)"
    )


class JobSpec(_Strict):
    """A whole job: data, model, method, optimiser, search, scaling and storage."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="run name: the folder under storage.path (letters, digits, '.', '_', '-')",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="training seed: model initialisation, batch "
                      "sampling and the search's TPE sampler; below 2**32, the seeds numpy and Optuna take "
                      "(final seeds are seed + 1 ... seed + search.final_seeds)")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the network")
    method: SerializeAsAny[MethodParams] = Field(
        default_factory=lambda: methods.params_class("gerne")(),
        description="the training method and its hyperparameters: {name: <method>, ...} (gerne-ray methods)",
    )
    optim: OptimSpec = Field(default_factory=OptimSpec, description="optimiser and schedule")
    search: SearchSpec = Field(default_factory=SearchSpec, description="model selection and search")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Ray Train workers and resources")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="where runs go: <path>/<name>/")
    version: Literal[SPEC_VERSIONS] = Field(  # type: ignore[valid-type]
        SPEC_VERSIONS[-1], description="the spec format's version (this release reads 1)"
    )

    @model_validator(mode="before")
    @classmethod
    def _a_version_this_release_reads(cls, raw: Any) -> Any:
        """Refuse a spec written for another format version, before reading any of its fields."""
        version = raw.get("version", SPEC_VERSIONS[-1]) if isinstance(raw, dict) else SPEC_VERSIONS[-1]
        if type(version) is not int or version not in SPEC_VERSIONS:
            raise ValueError(
                f"version: {version!r} is not a spec version this release reads (it reads: "
                f"{', '.join(map(str, SPEC_VERSIONS))}); upgrade gerne-ray to read it, or write the spec "
                f"for version {SPEC_VERSIONS[-1]}"
            )
        return raw

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_name(cls, value: Any) -> Any:
        """Validate the method section with the Params of the method it names (default gerne)."""
        if isinstance(value, MethodParams):
            return value
        if not isinstance(value, dict):
            raise ValueError("write the method as a mapping with its name, e.g. {name: gerne, c: 0.5}")
        name = value.get("name", "gerne")
        if not isinstance(name, str) or name not in methods.names():
            choice = create_model("MethodName", name=(Literal[tuple(methods.names())], ...))
            choice.model_validate({"name": name})  # raises, naming method.name and the choices
        return methods.params_class(name).model_validate({**value, "name": name})

    @model_validator(mode="after")
    def _selection_without_attribute_labels(self) -> JobSpec:
        if self.data.attributes != "unknown":
            return self
        needs_val_attributes = ("val_gba", "val_wga", "val_minority", "val_weighted_avg")
        if "metric" not in self.search.model_fields_set:  # the protocol's choice
            metric = "val_worst_class" if self.data.attribute_labels == "none" else "val_wga"
            object.__setattr__(self.search, "metric", metric)
        elif self.data.attribute_labels == "none" and set(self.search.metrics) & set(needs_val_attributes):
            needing = [m for m in self.search.metrics if m in needs_val_attributes]
            raise ValueError(
                f"search.metric: {', '.join(needing)} need{'s' if len(needing) == 1 else ''} validation "
                "attribute labels, but data.attribute_labels is none; use val_worst_class (the default "
                "then), val_class_balanced or val_avg"
            )
        return self

    @model_validator(mode="after")
    def _several_metrics_search_with_fifo(self) -> JobSpec:
        s = self.search
        if len(s.metrics) > 1 and s.scheduler != "fifo":
            if "scheduler" in s.model_fields_set:
                raise ValueError(
                    f"search.scheduler: {s.scheduler} stops trials by comparing one metric, but "
                    f"search.metric names {len(s.metrics)} ({', '.join(s.metrics)}); use search.scheduler: "
                    "fifo (the default with several metrics), or one search.metric"
                )
            object.__setattr__(s, "scheduler", "fifo")  # the default with several metrics
        return self

    @model_validator(mode="after")
    def _select_among_the_searched_metrics(self) -> JobSpec:
        s = self.search
        named = [s.select.maximize] * (s.select.maximize is not None) + list(s.select.subject_to)
        outside = list(dict.fromkeys(m for m in named if m not in s.metrics))
        if outside:
            raise ValueError(
                f"search.select: {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not in "
                f"search.metric ({', '.join(s.metrics)}); select by the searched metrics, or add "
                f"{'it' if len(outside) == 1 else 'them'} to search.metric"
            )
        return self

    @model_validator(mode="after")
    def _beta_schedule_fits_the_epochs(self) -> JobSpec:
        schedule = getattr(self.method, "beta_schedule", "constant")
        if schedule != "constant" and self.method.warmup_epochs > self.optim.epochs - 2:
            raise ValueError(
                f"method.warmup_epochs: {self.method.warmup_epochs} leaves no ramp in optim.epochs "
                f"{self.optim.epochs}; beta_schedule {schedule} runs from beta to beta_end over the epochs "
                f"after the warmup, at least 2 of them: use warmup_epochs <= {max(self.optim.epochs - 2, 0)}"
                + (" (or more epochs)" if self.optim.epochs < 2 else "")
            )
        return self

    @model_validator(mode="after")
    def _pbt_can_run(self) -> JobSpec:
        if self.search.scheduler != "pbt":
            return self
        problem = None
        if "beta" not in type(self.method).model_fields or "c" not in type(self.method).model_fields:
            problem = (f"perturbs lambda = c (beta + 1) and c, which method {self.method.name} does not "
                       "have; use a method with beta (gerne, reweight) or scheduler asha")
        elif getattr(self.method, "beta_schedule", "constant") != "constant":
            problem = ("makes beta's schedule itself (the perturbations), so method.beta_schedule must be "
                       "constant; use scheduler asha or fifo to search a schedule's start")
        elif self.data.attributes == "unknown":
            problem = ("needs known attributes: with pseudo-groups each trial's t sets its own bounds on "
                       "beta; use scheduler asha")
        elif self.scaling.distributed:
            problem = ("runs each trial in-process (a trial restores another trial's checkpoint, which a Ray "
                       "Train run cannot); use scaling.num_workers 1 without GPU, or scheduler asha")
        elif self.search.final_seeds:
            problem = ("finds a schedule of beta, c and lr per epoch (in each trial's history), not one "
                       "configuration to retrain; set search.final_seeds 0 and run the search with other "
                       "seeds instead")
        if problem:
            raise ValueError(f"search.scheduler: pbt {problem}")
        return self

    @model_validator(mode="after")
    def _method_ranges_of_registered_methods(self) -> JobSpec:
        """Each range of search.space.methods: a registered method's range-drawn parameter, in its values."""
        space = self.search.space
        for name, ranges in space.methods.items():
            where = f"search.space.methods.{name}"
            if name not in methods.names():
                known = ", ".join(methods.names())
                raise ValueError(f"{where}: no method has this name; use one of: {known}")
            method = methods.get(name)
            for key, (low, high) in ranges.items():
                default = method.search_params.get(key)
                if default is None:
                    has = ", ".join(method.search_params)
                    own = key in type(space).model_fields  # c, lr, ...: search.space's own ranges
                    raise ValueError(
                        f"{where}.{key}: method {name} draws no {key} from a range; "
                        + (f"its ranges: {has}" if has else "it has no range to set")
                        + (f" ({key}'s range is search.space.{key})" if own else ""))
                if low > high:
                    raise ValueError(f"{where}.{key}: write the range as [low, high]; "
                                     f"got [{low:g}, {high:g}]")
                if default.log and low <= 0:
                    raise ValueError(f"{where}.{key}: {key} is drawn log-uniformly, so the range must be "
                                     f"above 0; got [{low:g}, {high:g}]")
                for end in (low, high):
                    problem = param_problem(method.Params, key, end)
                    if problem:
                        raise ValueError(f"{where}.{key}: {end:g} is not a value method.{key} takes "
                                         f"({problem}); keep the range inside it")
        return self

    @model_validator(mode="after")
    def _final_seeds_below_the_seed_limit(self) -> JobSpec:
        k = self.search.final_seeds
        if k and self.seed + k > MAX_SEED:
            raise ValueError(
                f"seed: {self.seed} plus search.final_seeds {k} passes {MAX_SEED} (the final runs use seeds "
                f"seed + 1 ... seed + {k}, below 2**32 as numpy's and Optuna's seeds); use a seed of at most "
                f"{MAX_SEED - k}"
            )
        return self

    @model_validator(mode="after")
    def _method_has_its_labels(self) -> JobSpec:
        problem = missing_labels(self.method.name, self.data)
        if problem:
            raise ValueError(f"method.name: {problem}")
        return self

    @model_validator(mode="after")
    def _storage_path_without_secrets(self) -> JobSpec:
        # a check on the whole spec, not on the field: a field's error line would quote the URI's secret
        from gerne_ray.storage import uri_problem

        problem = uri_problem(self.storage.path)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _storage_reaches_every_node(self) -> JobSpec:
        if self.scaling.multi_node and "://" not in self.storage.path and not self.storage.shared:
            raise ValueError(
                f"storage.path: {self.storage.path!r} is a local folder, but scaling.placement_strategy "
                f"{self.scaling.placement_strategy} puts workers on other nodes, which could not write "
                "there; use a URI every node reaches (s3://bucket/runs, gs://...) or, for a file system "
                "every node mounts at that path, set storage.shared: true"
            )
        return self

    @property
    def folder(self):
        """This job's run folder, `<storage.path>/<name>` (gerne_ray.storage.RunFolder)."""
        from gerne_ray.storage import RunFolder

        return RunFolder(self.storage.path, self.name)

    @property
    def run_dir(self) -> Path:
        """The local folder holding this job's files (the run folder, or its mirror for a URI)."""
        return self.folder.local


SpecLike = JobSpec | dict | str | Path


def missing_labels(method: str, data: DataSpec) -> str | None:
    """Why a method cannot run with the attribute labels the data has (None when it can)."""
    cls = methods.get(method)
    if data.attributes != "unknown":
        return None
    if cls.needs_train_attributes:
        return (f"{method} needs the training split's attribute labels, but data.attributes is unknown; "
                "use data.attributes: known, or a method that does without (erm, jtt, lff, gerne)")
    if cls.needs_val_attributes and data.attribute_labels == "none":
        return (f"{method} needs validation attribute labels, but data.attribute_labels is none; "
                "use val_only or train_val, or a method that does without (erm, jtt, lff, gerne)")
    return None


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _section_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every model its fields hold (unions and containers included), each once."""
    found: list[type[BaseModel]] = []

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in found:
                found.append(tp)
                for field in tp.model_fields.values():
                    visit(field.annotation)
        for arg in get_args(tp):
            visit(arg)

    visit(model)
    return found


def json_schema() -> dict:
    """The job spec's JSON Schema (draft 2020-12): every key with its description and default.

    `method` is one of the registered methods' sections (its `name` says which; without one, the
    default method's), and `data.dataset` one of the registered datasets. Stable output: fields in
    their definition order, `$defs` sorted by name.
    """
    from pydantic.json_schema import models_json_schema
    from pydantic_core import to_jsonable_python

    from gerne_ray.data.registry import DATASETS

    params = {name: methods.params_class(name) for name in methods.names()}
    default_method = JobSpec.model_fields["method"].default_factory().name
    _, generated = models_json_schema([(m, "validation") for m in (JobSpec, *params.values())],
                                      ref_template="#/$defs/{model}")
    defs = generated["$defs"]
    root = defs.pop("JobSpec")
    defs.pop(MethodParams.__name__, None)  # the base class: `method` refers to each method's own
    models = [*_section_models(JobSpec)[1:], *params.values()]
    nodes = {JobSpec: root} | {m: defs[m.__name__] for m in models if m.__name__ in defs}
    for model, node in nodes.items():  # pydantic leaves out the defaults that a default_factory makes
        for key, field in model.model_fields.items():
            prop = node["properties"][key]
            if field.default_factory is not None and "default" not in prop:
                prop["default"] = to_jsonable_python(field.default_factory())
    for name, cls in params.items():
        node = defs[cls.__name__]
        node["properties"]["name"].setdefault(
            "description", f"the method ({', '.join(params)}; default {default_method}): `gerne-ray "
            "methods` lists each one's keys"
        )
        if name != default_method:  # a section without a name is the default method's
            node["required"] = sorted({*node.get("required", []), "name"})
    method = root["properties"]["method"]
    root["properties"]["method"] = {
        "description": method["description"], "default": method["default"],
        "oneOf": [{"$ref": f"#/$defs/{cls.__name__}"} for cls in params.values()],
    }
    defs["DataSpec"]["properties"]["dataset"]["enum"] = sorted(DATASETS)
    root["title"] = "gerne-ray job spec"
    return {"$schema": SCHEMA_DIALECT, **root, "$defs": dict(sorted(defs.items()))}


class _DuplicateKeyError(Exception):
    """A mapping in a spec file names a key twice (lines: 1-based, None in JSON)."""

    def __init__(self, key: object, lines: tuple[int, int] | None = None) -> None:
        super().__init__(key)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping repeating a key (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys written beside a merge override it on purpose
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKeyError(key, (seen[key], line))
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: PyYAML's own check reports it
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    """yaml.safe_load, refusing a mapping that repeats a key (_DuplicateKeyError)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads' object_pairs_hook: a dict, refusing an object that repeats a key."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _what_it_is(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((word for test, word in kinds if test(mode)), "a special file")


def _read_spec_bytes(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_SPEC_BYTES, or a GerneError saying what path is.

    The size is counted while reading (at most the limit + 1 bytes are read), not taken from the
    file system, which reports 0 for /proc files; a FIFO or device is refused before it is opened.
    """
    fix = "pass the path of a YAML job spec file (see jobs/)"
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise GerneError(f"spec {path}: no such file; {fix}") from None
    except OSError as err:
        raise GerneError(f"spec {path}: cannot be read ({err.strerror}); {fix}") from None
    if not stat.S_ISREG(mode):
        raise GerneError(f"spec {path}: is {_what_it_is(mode)}, not a regular file; {fix}")
    try:
        # O_NONBLOCK: should path turn into a FIFO after the check, opening it does not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_SPEC_BYTES + 1) if stat.S_ISREG(mode) else b""
    except OSError as err:
        raise GerneError(f"spec {path}: cannot be read ({err.strerror}); {fix}") from None
    if not stat.S_ISREG(mode):
        raise GerneError(f"spec {path}: is {_what_it_is(mode)}, not a regular file; {fix}")
    if len(data) > MAX_SPEC_BYTES:
        raise GerneError(
            f"spec {path}: more than {MAX_SPEC_BYTES} bytes is too large for a job spec (limit "
            f"{MAX_SPEC_BYTES}); a spec is a page of YAML: pass the right file"
        )
    return data


def read_spec_file(path: str | Path) -> dict:
    """Read a YAML or JSON spec file into a dict, with one-line errors naming the file.

    UTF-8, with or without a byte-order mark; a mapping that repeats a key is refused.
    """
    path = Path(path)
    data = _read_spec_bytes(path)
    try:
        text = data.decode("utf-8-sig")  # -sig: a leading byte-order mark (as some editors write) is dropped
    except UnicodeDecodeError as err:
        raise GerneError(f"spec {path}: not UTF-8 text ({err.reason}); save it as UTF-8 YAML") from err
    try:
        if path.suffix == ".json":
            raw = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            raw = _load_yaml(text)
    except _DuplicateKeyError as err:
        lines = sorted(set(err.lines or ()))
        where = f" (line{'s' if len(lines) > 1 else ''} {' and '.join(map(str, lines))})" if lines else ""
        raise GerneError(
            f"spec {path}: the key {_clip(repr(err.key))} appears twice in one mapping{where}; keep one "
            "(a repeated key would silently override the first)"
        ) from None
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise GerneError(f"spec {path}: not valid YAML/JSON{line}; fix the syntax") from None
    except RecursionError:
        raise GerneError(
            f"spec {path}: nested too deeply to be a job spec; fix its brackets or indentation"
        ) from None
    if raw is None:
        raise GerneError(f"spec {path}: the file is empty; write a job spec (see jobs/demo.yaml)")
    if not isinstance(raw, dict):
        raise GerneError(
            f"spec {path}: the top level is a {type(raw).__name__}, not a mapping of keys "
            "(name, data, model, method, optim, ...)"
        )
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of raw with each `key.path=value` set (value parsed as YAML).

    `method.name=<other method>` switches the method: the old method's keys the new one does not
    have are dropped (its own keys, set before or after, stay).
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GerneError(f"--set {item!r}: write it as key.path=value, e.g. method.beta=1.0")
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise GerneError(f"--set {item!r}: {part} is a value, not a section")
            node = child
        try:
            parsed = _load_yaml(value)
        except _DuplicateKeyError as err:
            key = _clip(repr(err.key))
            raise GerneError(f"--set {item!r}: the key {key} appears twice; keep one") from None
        except yaml.YAMLError as err:
            raise GerneError(f"--set {item!r}: the value is not valid YAML") from err
        if parents == ["method"] and leaf == "name" and parsed != node.get("name", "gerne"):
            node = _switch_method(node, parsed)
            raw["method"] = node
        node[leaf] = parsed
    return raw


def _switch_method(section: dict, name: object) -> dict:
    """A method section switched to another method: the keys the new method does not have are dropped."""
    if not isinstance(name, str) or name not in methods.names():
        return section  # validation names the choices
    known = methods.params_class(name).model_fields
    return {k: v for k, v in section.items() if k in known}


def load_spec(spec: SpecLike, overrides: list[str] | None = None) -> JobSpec:
    """A validated JobSpec from a path, dict or JobSpec, with `key.path=value` overrides."""
    source = "spec"
    if isinstance(spec, JobSpec):
        if not overrides:
            return spec
        raw = spec.model_dump(mode="json")
    elif isinstance(spec, dict):
        raw = spec
    elif not isinstance(spec, str | Path):
        raise GerneError(f"spec: a {type(spec).__name__} is not a job spec; pass a path, a dict or a JobSpec")
    else:
        source = f"spec {spec}"
        raw = read_spec_file(spec)
    raw = apply_overrides(raw, overrides or [])
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise GerneError(f"{source}: {describe_validation_error(err, raw)}") from None


def _model_at(loc: tuple, raw: Any = None) -> type[BaseModel] | None:
    model: Any = JobSpec
    if loc[:1] == ("method",):  # the section's model is the one of the method it names
        section = raw.get("method") if isinstance(raw, dict) else None
        name = section.get("name", "gerne") if isinstance(section, dict) else "gerne"
        if not isinstance(name, str) or name not in methods.names():
            return None
        model, loc = methods.params_class(name), loc[1:]
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def describe_validation_error(err: ValidationError, raw: Any = None) -> str:
    """The problems, joined by "; ": each field's dotted path, what is wrong, how to fix it.

    Linear in the number of errors; the first MAX_PROBLEMS are shown, then "and N more problems".
    """
    errors = []
    for e in err.errors():  # drop pydantic's union-branch tags (list[...], function-after[...]) from paths
        errors.append({**e, "loc": tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))})
    ours = {e["loc"] for e in errors if e["type"] == "value_error"}
    inner = {e["loc"][:i] for e in errors for i in range(len(e["loc"]))}  # proper prefixes of locations
    parts: list[str] = []
    more = 0
    seen = set()
    for e in errors:
        loc = e["loc"]
        if loc in ours and e["type"] != "value_error":
            continue  # a union's other branch failing too: our own message says what is wrong
        if loc in inner:
            continue  # another union branch: the errors inside this field say more
        key = (loc, e["msg"])
        if key in seen:
            continue
        seen.add(key)
        if len(parts) == MAX_PROBLEMS:
            more += 1
        else:
            parts.append(_describe_one(e, raw))
    if more:
        parts.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "; ".join(parts)


def _clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """text, cut to limit characters with an ellipsis (a huge key or value stays readable)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_one(e: dict, raw: Any) -> str:
    """One validation problem: the field's dotted path, what is wrong, how to fix it."""
    loc = e["loc"]
    field = _clip(".".join(str(p) for p in loc) or "(top level)")
    if not loc and e["type"] == "value_error":  # a check across sections: its message names the field
        return e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1], raw)
        allowed = ", ".join(parent.model_fields) if parent else "see the spec reference"
        owner = f" of method {parent.model_fields['name'].default}" if loc[:1] == ("method",) and parent \
            else ""
        return f"{field}: unknown key{owner}; remove it or use one of: {allowed}"
    if e["type"] == "missing":
        return f"{field}: required; add it to the spec"
    got = e.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {_clip(repr(got))})"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}{shown}"
