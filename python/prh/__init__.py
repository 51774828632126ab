"""prh — a registry for representational alignment research, from Python.

Log each checkpoint's features from a training loop, align them against reference models
through prh's content-addressed cache, and get polars DataFrames back. The same Rust core as
the ``prh`` command line: a registry written from Python and from the CLI is one registry.

    import prh
    reg = prh.Registry("runs/.prh")            # or prh.Registry() to discover, prh.init(path)
    rows = reg.log(feats, model="my-llm", checkpoint="step-2000", step=2000,
                   dataset="wit_1024", modality="language", scores={"bpb": 0.93},
                   against=["dinov2-g"], metric="mutual_knn", k=10)
    reg.trajectory(model="my-llm", against=["dinov2-g"], metric="mutual_knn")

Features are an n × L × d or n × d array, or a list of n × d arrays whose widths may differ,
from numpy, torch (CPU tensors; prh never imports torch itself), JAX or anything numpy can
view; f16, bf16, f32 or f64. Contiguous arrays are read in place, without a copy, while the
GIL is released.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import polars as pl

from . import _prh
from ._prh import (
    BackendError,
    Conflict,
    Corrupt,
    Error,
    InternalError,
    Interrupted,
    InvalidInput,
    NotCached,
    NotFound,
    Unavailable,
    Unsupported,
)

__all__ = [
    "Registry",
    "Trend",
    "init",
    "compare",
    "Error",
    "InvalidInput",
    "NotFound",
    "Conflict",
    "NotCached",
    "Unsupported",
    "Unavailable",
    "BackendError",
    "Corrupt",
    "Interrupted",
    "InternalError",
]
__version__ = _prh.__version__

Models = Union[str, Sequence[str]]
Progress = Union[None, bool, Callable[[int, int], Any]]

_DTYPES = {"float16": "f16", "float32": "f32", "float64": "f64", "bfloat16": "bf16"}


def _selector(models: Models) -> str:
    """A model selector as the CLI spells it: names, modality=…, family=… or all."""
    if isinstance(models, str):
        return models
    return ",".join(models)


def _numpy(x: Any) -> tuple[np.ndarray, str]:
    """A numpy view of x (no copy where possible) and prh's name for its dtype."""
    mod = type(x).__module__ or ""
    if mod.startswith("torch"):
        torch = sys.modules["torch"]  # the caller's torch: prh does not import it
        t = x.detach()
        if t.device.type != "cpu":
            raise InvalidInput(f"features must be on the CPU, this tensor is on {t.device}")
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy(), "bf16"
        x = t.numpy()
    a = np.asarray(x)
    name = _DTYPES.get(a.dtype.name)
    if name is None:
        raise InvalidInput(
            f"features must be floating point (f16, bf16, f32 or f64), got {a.dtype}"
        )
    if name == "bf16":  # ml_dtypes' bfloat16 (JAX): hand over the raw 16-bit words
        a = a.view(np.uint16)
    return a, name


def _lend(x: Any) -> tuple:
    """(address, bytes spanned, shape, strides in elements, dtype, owner) of one array."""
    a, dtype = _numpy(x)
    item = a.itemsize
    if a.ndim not in (2, 3):
        raise InvalidInput(f"features must be n × d or n × L × d, got shape {a.shape}")
    if any(s < 0 or s % item for s in a.strides):
        a = np.ascontiguousarray(a)  # reversed or unaligned views: one copy
    strides = [s // item for s in a.strides]
    span = 0 if a.size == 0 else sum((n - 1) * s for n, s in zip(a.shape, strides)) * item + item
    return (a.__array_interface__["data"][0], span, list(a.shape), strides, dtype, a)


def _arrays(feats: Any) -> list:
    if isinstance(feats, (list, tuple)):
        if not feats:
            raise InvalidInput("no layers given: the list of arrays is empty")
        out = [_lend(f) for f in feats]
        for i, t in enumerate(out):
            if len(t[2]) != 2:
                raise InvalidInput(
                    f"layer {i} has shape {tuple(t[2])}; in a list each array must be one layer (n × d)"
                )
        return out
    return [_lend(feats)]


def _frame(rows: Any) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None)


def _progress(progress: Progress, what: str) -> Optional[Callable[[int, int], Any]]:
    """A (done, total) callback: the given one, tqdm when installed (progress=None), or none."""
    if callable(progress):
        return progress
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=what, unit="cell", leave=False)
        b = bar["bar"]
        b.total = total
        b.n = done
        b.refresh()
        if total and done >= total:
            b.close()

    return update


def _opts(**kw: Any) -> str:
    return json.dumps({k: v for k, v in kw.items() if v is not None})


def _metric_params(params: dict) -> dict:
    """Metric options beyond ``k`` (kernel, sigma, cca_dim, ridge, ties, emulate_pymp: the
    names of ``prh align``'s flags), checked by name; values are checked by prh."""
    unknown = sorted(set(params) - set(_prh.METRIC_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown option(s) {', '.join(unknown)}; metric options: {', '.join(_prh.METRIC_OPTIONS)}"
        )
    return params


class Trend:
    """Alignment vs. performance over models (``prh trend --format json``).

    ``models`` is a DataFrame (model, checkpoint, alignment, performance); the statistics are
    attributes: ``pearson_r``, ``pearson_p``, ``spearman_rho``, ``spearman_p``, ``slope``,
    ``intercept``, ``r_ci95``, ``n_models``, ``higher_is_better``, ``verdict``, ``reduce``.
    ``to_dict()`` gives the CLI's JSON object exactly.
    """

    def __init__(self, data: dict):
        self._data = data
        self.models = _frame(data["models"])
        for k, v in data.items():
            if k != "models":
                setattr(self, k, v)

    def to_dict(self) -> dict:
        return self._data

    def __repr__(self) -> str:
        return f"Trend({self._data.get('verdict')!r}, n_models={self._data.get('n_models')})"


class Registry:
    """A prh registry: the catalog and blobs that ``prh`` commands use.

    ``Registry(path)`` opens the registry at ``path``; ``Registry()`` finds one like the CLI
    ($PRH_REGISTRY, else the nearest ``.prh/`` here or above). Raises ``NotFound`` when there is
    none (``prh.init(path)`` creates one). Every method opens the registry for its own duration,
    so Python and ``prh`` commands may use it at the same time.
    """

    def __init__(self, path: Union[str, Path, None] = None):
        self.root = _prh.discover(None if path is None else str(path))

    def __repr__(self) -> str:
        return f"prh.Registry({self.root!r})"

    def log(
        self,
        feats: Any,
        *,
        model: str,
        dataset: str,
        checkpoint: Optional[str] = None,
        step: Optional[int] = None,
        modality: Optional[str] = None,
        family: Optional[str] = None,
        pool: str = "avg",
        scores: Optional[dict] = None,
        meta: Optional[dict] = None,
        sample_ids: Union[Sequence[str], str, None] = None,
        against: Optional[Models] = None,
        metric: str = "mutual_knn",
        k: int = 10,
        reduce: str = "max",
        null: int = 0,
        bootstrap: int = 0,
        seed: int = 0,
        progress: Progress = None,
        **params: Any,
    ) -> pl.DataFrame:
        """Store one checkpoint's features and align it against reference models.

        feats: n × L × d or n × d array, or a list of n × d arrays (widths may differ), from
            numpy, torch (CPU), JAX…; f16, bf16, f32 or f64. Read in place when contiguous.
        model, dataset: names; a new model needs ``modality`` ("language", "vision", …); a new
            dataset takes n from the features.
        checkpoint, step: the checkpoint's name (default "final") and training step.
        scores: performance scores of the checkpoint, e.g. {"bpb": 0.93}.
        meta: provenance (precision, batch size, revision…), stored with the checkpoint.
        sample_ids: the ids of the rows in order (or their digest: b3sum of one id per line):
            refused unless they are the dataset's samples in its order; a new dataset keeps them.
        against: reference models (names, "modality=vision", "family=…" or "all"); when given,
            every missing layer-pair cell is computed and cached.
        metric, k, reduce, null, bootstrap, seed: as ``prh align``; other metric options by
            name (kernel="rbf", sigma=2.0, cca_dim, ridge, ties="expected", emulate_pymp).
        progress: a callback (done_cells, total_cells), False for none; by default a tqdm bar
            when tqdm is installed.

        Returns the alignment rows (``prh align --format json`` columns: x_model, y_model,
        score, best_layers, …) when ``against`` is given, else the ingested layers (layer,
        hash, dtype, d, bytes, new_blob, new_row). Raises InvalidInput (NaN/Inf, wrong shapes,
        n differing from the dataset's) with nothing written.
        """
        opts = _opts(
            model=model, dataset=dataset, checkpoint=checkpoint, step=step, modality=modality,
            family=family, pool=pool, scores=scores, meta=meta,
            sample_ids=sample_ids if sample_ids is None or isinstance(sample_ids, str)
            else [str(i) for i in sample_ids],
            against=None if against is None else _selector(against),
            metric=metric, k=k, reduce=reduce, null=null, bootstrap=bootstrap, seed=seed,
            **_metric_params(params),
        )
        out = json.loads(
            _prh.ingest(self.root, opts, arrays=_arrays(feats), progress=_progress(progress, model))
        )
        self.last_ingest = out["ingest"]
        if against is None:
            return _frame(out["ingest"]["layers"])
        return _frame(out["alignment"])

    def ingest(
        self,
        path: Union[str, Path],
        *,
        model: str,
        dataset: str,
        checkpoint: Optional[str] = None,
        step: Optional[int] = None,
        modality: Optional[str] = None,
        family: Optional[str] = None,
        pool: str = "avg",
        scores: Optional[dict] = None,
        meta: Optional[dict] = None,
    ) -> dict:
        """Ingest a feature file (.npy, .npz, .safetensors, platonic-rep .pt) like ``prh ingest``.

        Returns the ingest report (``prh ingest --format json``).
        """
        opts = _opts(
            model=model, dataset=dataset, checkpoint=checkpoint, step=step, modality=modality,
            family=family, pool=pool, scores=scores, meta=meta,
        )
        return json.loads(_prh.ingest(self.root, opts, path=str(path)))["ingest"]

    def align(
        self,
        *,
        x: Models,
        y: Models,
        metric: str = "mutual_knn",
        k: int = 10,
        reduce: str = "max",
        null: int = 0,
        bootstrap: int = 0,
        seed: int = 0,
        all_checkpoints: bool = False,
        progress: Progress = None,
        clamp_rule: str = "exact",
        **params: Any,
    ) -> pl.DataFrame:
        """Align every x model with every y model through the cache (``prh align``).

        x, y: names (a list or "a,b"), "modality=…", "family=…" or "all". ``null`` permutations
        add null_mean, p_value, z, tau and the calibrated score; ``bootstrap`` adds ci95.
        Other metric options by name, as ``prh align``'s flags: kernel="rbf", sigma=2.0,
        cca_dim=5, ridge=0.2, ties="expected", emulate_pymp=True. ``clamp_rule``: "exact"
        (platonic-rep's compute_alignment and platonic.Alignment) or "sample-mean" (its
        measure_alignment.py run without --precise); each row's ``prep`` names the one used.
        Returns one row per model pair, the ``prh align --format json`` fields.
        """
        opts = _opts(
            x=_selector(x), y=_selector(y), metric=metric, k=k, reduce=reduce, null=null,
            bootstrap=bootstrap, seed=seed, all_checkpoints=all_checkpoints,
            clamp_rule=clamp_rule, **_metric_params(params),
        )
        return _frame(json.loads(_prh.align(self.root, opts, progress=_progress(progress, "align"))))

    def _chart(self, kind: str, **kw: Any) -> Any:
        return json.loads(_prh.chart(self.root, kind, _opts(**kw)))

    def trend(
        self,
        *,
        x: Models,
        y: Models,
        perf: str,
        metric: str = "mutual_knn",
        k: int = 10,
        reduce: str = "max",
        lower_is_better: bool = False,
        per_y: bool = False,
        seed: int = 0,
        compute: bool = False,
        plot: Union[str, Path, None] = None,
        clamp_rule: str = "exact",
        **params: Any,
    ) -> Trend:
        """Alignment vs. performance (``prh trend``): each x model's mean alignment with the y
        models against its score ``perf``, with Pearson r, Spearman ρ, p-values, the fitted line
        and a bootstrap interval of r. Missing cells raise NotCached naming the ``prh align``
        command, unless ``compute=True``. ``plot``: also draw the scatter to this .svg/.png."""
        return Trend(
            self._chart(
                "trend", x=_selector(x), y=_selector(y), perf=perf, metric=metric, k=k,
                reduce=reduce, lower_is_better=lower_is_better, per_y=per_y, seed=seed,
                compute=compute, plot=None if plot is None else str(plot),
                clamp_rule=clamp_rule, **_metric_params(params),
            )
        )

    def matrix(
        self,
        *,
        x: Models,
        y: Models,
        metric: str = "mutual_knn",
        k: int = 10,
        reduce: str = "max",
        perf: Optional[str] = None,
        lower_is_better: bool = False,
        compute: bool = False,
        plot: Union[str, Path, None] = None,
        clamp_rule: str = "exact",
        values: str = "score",
        null: int = 0,
        seed: int = 0,
        **params: Any,
    ) -> pl.DataFrame:
        """The model × model table (``prh matrix``): one row per x model with one column per
        y model, ordered worst to best by ``perf`` when given; ``plot`` draws the heatmap.
        ``values="q_value"`` (or ``"p_value"``, ``"calibrated"``) with ``null=P`` permutations
        puts each pair's statistic from its permutation null in the cells (the q-value among
        the table's pairs); cells and draws are computed when missing and cached."""
        return _frame(
            self._chart(
                "matrix", x=_selector(x), y=_selector(y), metric=metric, k=k, reduce=reduce,
                perf=perf, lower_is_better=lower_is_better, compute=compute,
                plot=None if plot is None else str(plot), clamp_rule=clamp_rule,
                values=values, null=null, seed=seed, **_metric_params(params),
            )
        )

    def trajectory(
        self,
        *,
        model: str,
        against: Models,
        metric: str = "mutual_knn",
        k: int = 10,
        reduce: str = "max",
        compute: bool = False,
        plot: Union[str, Path, None] = None,
        **params: Any,
    ) -> pl.DataFrame:
        """One model's alignment across its checkpoints (``prh trajectory``): checkpoint, step,
        against, score, reduce; ``plot`` draws one line per reference model (.svg or .png)."""
        return _frame(
            self._chart(
                "trajectory", model=model, against=_selector(against), metric=metric, k=k,
                reduce=reduce, compute=compute, plot=None if plot is None else str(plot),
                **_metric_params(params),
            )
        )

    def query(self, sql: str) -> pl.DataFrame:
        """Free SQL over the tables models, checkpoints, datasets, reps, scores, cells and
        alignment (``prh query``)."""
        return _frame(json.loads(_prh.query(self.root, sql)))

    def _ls(self, what: str, model: Optional[str]) -> pl.DataFrame:
        return _frame(json.loads(_prh.listing(self.root, what, model)))

    def models(self) -> pl.DataFrame:
        """Every model: name, modality, family, num_params."""
        return self._ls("models", None)

    def checkpoints(self, model: Optional[str] = None) -> pl.DataFrame:
        """Checkpoints (of one model when given) with step, creation time and provenance."""
        return self._ls("checkpoints", model)

    def reps(self, model: Optional[str] = None) -> pl.DataFrame:
        """Representations: hash, model, checkpoint, dataset, layer, pool, dtype, n, d, layout."""
        return self._ls("reps", model)

    def scores(self, model: Optional[str] = None) -> pl.DataFrame:
        """Performance scores: model, checkpoint, name, value, higher_is_better."""
        return self._ls("scores", model)

    def datasets(self) -> pl.DataFrame:
        """Datasets: name, n, description, has_ids."""
        return self._ls("datasets", None)

    def export(self, path: Union[str, Path], models: Optional[Iterable[str]] = None) -> dict:
        """Write the registry (or some models) to one bundle file (``prh export``)."""
        return json.loads(
            _prh.export(self.root, str(path), None if models is None else list(models))
        )

    def import_(self, path: Union[str, Path]) -> dict:
        """Merge a bundle into this registry, verified before anything is committed
        (``prh import``)."""
        return json.loads(_prh.import_bundle(self.root, str(path)))


def init(
    path: Union[str, Path], catalog: Optional[str] = None, blobs: Optional[str] = None
) -> Registry:
    """Create a registry at ``path`` (``prh init``) and open it."""
    return Registry(_prh.init(str(path), catalog, blobs))


def compare(
    a: Any,
    b: Any,
    *,
    metric: str = "mutual_knn",
    k: int = 10,
    reduce: str = "max",
    prep: bool = True,
    clamp_rule: str = "exact",
    **params: Any,
) -> float:
    """One alignment score between two feature sets of the same n samples (``prh compare``),
    no registry: each an array or list of arrays as in ``Registry.log``; the best layer pair's
    score by default (``reduce``: max, mean, last or layers=I,J)."""
    return _prh.compare(
        _arrays(a),
        _arrays(b),
        json.dumps(
            {
                "metric": metric, "k": k, "reduce": reduce, "prep": prep,
                "clamp_rule": clamp_rule, **_metric_params(params),
            }
        ),
    )
