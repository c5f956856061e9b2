"""What a training method is: its hyperparameters, how a step draws and scores a batch, its state.

A method is a `Method` subclass in one module under gerne_ray/methods/, registered by name in
gerne_ray/methods/__init__.py. The training loop (gerne_ray.loop) knows only this interface:

- `Params`: a pydantic model of the method's hyperparameters (`method: {name: ..., ...}` in a spec;
  an unknown key is refused naming the method).
- `draw(sampler)`: one step's rows of the training split (and how many open the biased batch).
- `losses(batch)`: a dict with at least `loss`, the mean loss over this worker's rows that is
  back-propagated (the loop scales it so that data-parallel averaging gives the union's mean);
  every key of `loss_keys` is recorded per epoch.
- `state_dict` / `load_state_dict`: the method's own state (Group DRO's q, LfF's averages), saved in
  every checkpoint and identical on every worker; `aux_models`: extra networks it trains (LfF's
  biased model), each with its own optimizer, checkpointed by the loop.
- `search_params`: hyperparameters the search draws from a range, {name: SearchRange(low, high, log)},
  each range replaceable in a spec (`search.space.methods.<method>.<name>: [low, high]`); the default
  `suggest` draws them. `suggest(trial, stats, search, params)`: its define-by-run search space
  (Optuna) when it needs more (GERNE's beta inside bounds that depend on c), the values it returns set
  on its Params for the trial; `check(params, stats)`: a check against the data (beta's bounds).
- `epoch_start(epoch, epochs)`: hyperparameters that move during training (GERNE's beta_schedule), set
  before each epoch; what it returns is recorded in the epoch's history row.
- What it needs: training groups (`uses_groups`: pseudo-groups stand in when attributes are
  unknown; `needs_train_attributes`: true labels only), validation attribute labels, a first stage.

Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

if TYPE_CHECKING:
    import optuna

    from gerne_ray.groups import GroupStats
    from gerne_ray.sampling import PairedSampler


# t of a method that uses training groups: with unknown attributes they are pseudo-groups cut at t
PseudoT = Annotated[float, Field(gt=0, lt=0.5, description=(
    "unknown attributes: the share of each class put into the pseudo-minority group"))]


class MethodParams(BaseModel):
    """The hyperparameters of one method (each method subclasses this with its own fields)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str


class SearchRange(NamedTuple):
    """A hyperparameter's default search range: uniform, or log-uniform (log) in [low, high]."""

    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"{'log-uniform' if self.log else 'uniform'} in [{self.low:g}, {self.high:g}]"


@dataclass
class Batch:
    """One step's batch on one worker: inputs, labels, groups, the rows' positions in the training split."""

    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    rows: np.ndarray  # positions into the training split (what per-sample state is indexed by)
    n_biased: int  # the first n_biased rows are the biased batch (GERNE), 0 otherwise
    scale: float  # the loop's factor on this worker's mean loss (data-parallel union mean)


class Method:
    """One training method (subclass per method; see the module docstring for the contract)."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    summary: ClassVar[str] = ""
    loss_keys: ClassVar[tuple[str, ...]] = ("loss",)
    batches_per_step: ClassVar[int] = 1  # batches of B per class each step draws (GERNE: 2)
    uses_groups: ClassVar[bool] = False  # draws or weighs by training groups (pseudo-groups if unknown)
    needs_train_attributes: ClassVar[bool] = False  # true training attribute labels, never pseudo
    needs_val_attributes: ClassVar[bool] = False  # validation attribute labels (model selection aside)
    search_ranges: ClassVar[dict[str, str]] = {}  # param -> how `suggest` draws it (for `gerne-ray methods`)
    search_params: ClassVar[dict[str, SearchRange]] = {}  # drawn from a range a spec may replace

    def __init__(self, params: MethodParams, stats: GroupStats, ctx: Any, stage1: Any = None) -> None:
        self.params, self.stats, self.ctx = params, stats, ctx
        self.stage1_output = stage1  # what `first_stage` produced for this job (None without one)
        self.models: dict[str, nn.Module] = {}  # set by the loop: "model" and the aux models, prepared

    # -- the data ----------------------------------------------------------------------------------
    @classmethod
    def check(cls, params: MethodParams, stats: GroupStats) -> None:
        """Refuse hyperparameters the training data does not allow (one GerneError line)."""

    @classmethod
    def prepare_dataset(cls, params: MethodParams, dataset: Any) -> Any:
        """The dataset this method trains and evaluates on (DFR holds out half of validation)."""
        return dataset

    @classmethod
    def first_stage(cls, spec: Any) -> Any:
        """The first stage the job needs, run once per job and shared by its trials, or None.

        An object with `run(spec, dataset, folder)` returning what `__init__` receives as `stage1`
        (gerne_ray.stage1 holds the cached ones).
        """
        return None

    @property
    def sampler_c(self) -> float:
        """c of the less-biased batches this method draws (1: group-balanced)."""
        return 1.0

    # -- training ----------------------------------------------------------------------------------
    def aux_models(self, build: Callable[[], nn.Module]) -> dict[str, nn.Module]:
        """Extra networks trained beside the model (each gets an optimizer and a checkpoint entry)."""
        return {}

    def draw(self, sampler: PairedSampler) -> tuple[np.ndarray, int]:
        """One step's rows of the training split, and how many of them open the biased batch."""
        return sampler.biased(), 0

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The step's losses on this worker's batch; `loss` is back-propagated."""
        raise NotImplementedError

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        """Set the hyperparameters of epoch `epoch` of `epochs` (GERNE's beta_schedule); return what the
        epoch's history row records of them ({} by default)."""
        return {}

    def step_context(self) -> contextlib.AbstractContextManager:
        """Context around forward and backward (GERNE's diagnostics: DDP's no_sync)."""
        return contextlib.nullcontext()

    def backward(self, losses: dict[str, torch.Tensor], scale: float) -> dict[str, float]:
        """Back-propagate the scaled loss; return per-step diagnostics (none by default)."""
        (scale * losses["loss"]).backward()
        return {}

    @property
    def diagnostic_keys(self) -> tuple[str, ...]:
        """Keys of what `backward` returns, averaged per epoch into the history."""
        return ()

    def eval_model(self, model: nn.Module, dataset: Any) -> nn.Module:
        """The network evaluated after an epoch (DFR: the model with its last layer refitted)."""
        return model

    def state_dict(self) -> dict:
        """The method's own state (tensors and plain values), identical on every worker."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""

    # -- search and results ------------------------------------------------------------------------
    @classmethod
    def suggest(cls, trial: optuna.Trial, stats: GroupStats, search: Any,
                params: MethodParams) -> dict[str, Any]:
        """Draw the method's searched hyperparameters (define-by-run): each of `search_params` from its
        range (`search_range`); {} when it has none.

        stats: the training groups (pseudo-groups for the trial's t); search: the spec's search
        section; params: the job's method section (its fixed values, e.g. JTT's T_max).
        """
        ranges = {key: cls.search_range(search, key) for key in cls.search_params}
        return {key: trial.suggest_float(key, r.low, r.high, log=r.log) for key, r in ranges.items()}

    @classmethod
    def search_range(cls, search: Any, key: str) -> SearchRange:
        """The range `suggest` draws `key` from: the spec's search.space.methods.<name>.<key>, or the
        method's default (search may be None: the default)."""
        default = cls.search_params[key]
        ranges = getattr(getattr(search, "space", None), "methods", None) or {}
        chosen = ranges.get(cls.name, {}).get(key)
        return default if chosen is None else SearchRange(float(chosen[0]), float(chosen[1]), default.log)

    @classmethod
    def describe_search(cls) -> dict[str, str]:
        """How the search draws each hyperparameter (`gerne-ray methods`)."""
        drawn = {key: f"{r.describe()} (search.space.methods.{cls.name}.{key})"
                 for key, r in cls.search_params.items()}
        return {**cls.search_ranges, **drawn}

    @classmethod
    def check_search(cls, stats: GroupStats, search: Any, params: MethodParams | None = None) -> None:
        """Refuse, in one line, a search space the training data leaves empty (before any trial);
        params: the job's method section (its fixed values)."""

    @classmethod
    def describe(cls, params: MethodParams, stats: GroupStats) -> dict[str, Any]:
        """Result keys describing the configuration (GERNE: c, beta, lambda and beta's bounds)."""
        return {}

    @classmethod
    def searchable(cls) -> bool:
        """Whether `gerne-ray tune` has anything of this method's own to search."""
        return bool(cls.search_ranges or cls.search_params)
