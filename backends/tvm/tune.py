"""MetaSchedule tuning with a persistent JSON database.

``tune`` extracts the fused TIR kernels of a Relax module (the same fusion :func:`lower.build`
uses), skips every kernel the database already holds a measured record for, and tunes only the
rest. Tuning a model twice, or two models sharing kernels, therefore never re-tunes a known
workload. :func:`lower.build` with ``database=`` then uses the tuned kernels and falls back to
the search-free schedules for the others.

The database is keyed by each kernel's structural hash; the target only has to match between
``tune`` and ``build`` (use :func:`tuning_target` for both, which pins ``num-cores``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` did."""

    database: Any  # tvm.s_tir.meta_schedule.database.JSONDatabase
    target: Any  # the tvm.target.Target tuned for (pass it to build)
    tasks_total: int
    tasks_tuned: list[str]
    tasks_skipped: list[str]  # already in the database
    new_records: int  # measured candidates added to the database by this call


_BUILD_FUNC = "lepton.tvm.meta_schedule_build"


def _register_build_func() -> None:
    """Register MetaSchedule's build step without its ``import tvm.s_tir.tensor_intrin``.

    Runs in each builder worker (the LocalBuilder initializer). TVM's default build function
    imports ``tvm.s_tir.tensor_intrin`` on every call, which takes 60-100 s on the 2-core CI
    machine -- longer than the builder's timeout, so every candidate failed with "Timeout".
    The kernels MetaSchedule's default CPU rules produce for float models use no tensor
    intrinsics, so nothing is lost.
    """
    from tvm_ffi import register_global_func

    def build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    register_global_func(_BUILD_FUNC, build, override=True)


def tuning_target(target: Any) -> "tvm.target.Target":  # noqa: F821
    """``target`` resolved, with ``num-cores`` set for CPU targets (MetaSchedule needs it)."""
    import tvm

    from .targets import resolve_target

    t = target if isinstance(target, tvm.target.Target) else resolve_target(target)
    if t.kind.name == "llvm" and "num-cores" not in t.attrs:
        d = dict(t.export())
        d["num-cores"] = os.cpu_count() or 1
        d.pop("keys", None)
        d.pop("tag", None)
        t = tvm.target.Target(d)
    return t


def open_database(database_dir: str | os.PathLike) -> Any:
    """Open (creating if needed) the JSON tuning database in ``database_dir``."""
    from tvm.s_tir import meta_schedule as ms

    Path(database_dir).mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(database_dir), module_equality="structural")


def fused_module(mod: Any, target: Any) -> Any:
    """Run the build pipeline up to kernel fusion (before scheduling): the kernels ``build`` sees."""
    from tvm.s_tir import dlight as dl

    from . import lower

    passes = lower.pipeline_passes(target)
    cut = next(i for i, p in enumerate(passes) if isinstance(p, dl.ApplyDefaultSchedule))
    with target:
        for p in passes[:cut]:
            mod = p(mod)
    return mod


def tune(
    mod: Any,
    target: Any,
    trials: int,
    database_dir: str | os.PathLike,
    *,
    trials_per_task: int | None = None,
    trials_per_iter: int = 16,
    only: list[str] | None = None,
    seed: int | None = 0,
) -> TuneResult:
    """Tune the kernels of ``mod`` for ``target`` with MetaSchedule, persisting to ``database_dir``.

    Args:
        mod: Relax module from :func:`lower.to_relax`.
        target: target (preset name, JSON, dict or ``tvm.target.Target``).
        trials: total measurement budget over all kernels still to tune.
        database_dir: JSON database folder (``database_workload.json``,
            ``database_tuning_record.json``); reused across calls and models.
        trials_per_task: cap per kernel (default: ``trials`` split evenly, at least one iteration).
        trials_per_iter: candidates measured per search iteration.
        only: optional substrings; tune only kernels whose name contains one (e.g. ``["conv2d"]``).
        seed: search seed, for reproducibility.

    Returns:
        :class:`TuneResult`; build with ``lower.build(mod, result.target, database=result.database)``.
    """
    from tvm.s_tir import meta_schedule as ms

    tgt = tuning_target(target)
    db = open_database(database_dir)
    fused = fused_module(mod, tgt)
    tasks = ms.relax_integration.extract_tasks(fused, tgt)
    if only:
        tasks = [t for t in tasks if any(s in t.task_name for s in only)]
    todo, skipped = [], []
    for t in tasks:
        # A workload is "known" when it has a measured record; a workload committed by an
        # interrupted run without records is tuned again.
        if db.has_workload(t.dispatched[0]) and db.query_tuning_record(t.dispatched[0], tgt, t.task_name) is not None:
            skipped.append(t.task_name)
        else:
            todo.append(t)
    before = len(db)
    if todo and trials > 0:
        per_task = trials_per_task or max(trials_per_iter, trials // len(todo))
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo, work_dir=str(database_dir), seed=seed
        )
        workers = max(1, min(2, os.cpu_count() or 1))
        builder = ms.builder.LocalBuilder(
            f_build=_BUILD_FUNC, initializer=_register_build_func, max_workers=workers, timeout_sec=60
        )
        runner = ms.runner.LocalRunner(timeout_sec=60)
        ms.tune_tasks(
            builder=builder,
            runner=runner,
            tasks=contexts,
            task_weights=weights,
            work_dir=str(database_dir),
            max_trials_global=trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=trials_per_iter,
            database=db,
        )
    return TuneResult(
        database=db,
        target=tgt,
        tasks_total=len(tasks),
        tasks_tuned=[t.task_name for t in todo] if trials > 0 else [],
        tasks_skipped=skipped,
        new_records=len(db) - before,
    )
