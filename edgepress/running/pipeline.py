"""Run a recipe: the source model, then each stage in its own folder, then evaluation, gate, report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.core import atomic
from edgepress.measure import evaluation
from edgepress.gating import budgets as gate
from edgepress.measure import sizes as measure
from edgepress.running import on_target
from edgepress.report import model as report_model
from edgepress.report import writer as report
from edgepress.running import resume
from edgepress.compress.training import distributed
from edgepress.measure.datasets import DataProvider
from edgepress.core.errors import UserError
from edgepress.running.model_inputs import input_names_of, input_shape_of, output_infos, tokenizer_of
from edgepress.core.progress import say
from edgepress.recipe import Recipe
from edgepress.running.folder import RunFolder, write_error
from edgepress.running.lock import output_lock
from edgepress.running.options import OUT
from edgepress.stages.stage import ARTIFACT_FILE, Artifact, StageContext, StageOutput
from edgepress.stages.registry import REGISTRY
from edgepress.targets import PartialMeasurement
from edgepress.measure.task import Task, resolve


@dataclass(frozen=True)
class RunResult:
    report: report_model.Report  # what report.json holds
    out_dir: Path

    @property
    def passed(self) -> bool:
        return self.report.gate.passed


def build_source(recipe: Recipe, *, work_dir: Path, input_shape: tuple[int, ...], log,
                 sample: dict[str, np.ndarray] | None = None) -> StageOutput:
    """Stage 00: the user's model as an artifact (torch weights, or a copy of the given ONNX file)."""
    if recipe.model.onnx is not None:
        from edgepress.runtime.session import open_session

        open_session(recipe.model.onnx, threads=1)  # refuses a file that is not ONNX before copying it
        out = work_dir / ARTIFACT_FILE["onnx"]
        shutil.copyfile(recipe.model.onnx, out)
        return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={})
    from edgepress.io import torch_artifact
    from edgepress.models.checkpoint import load_checkpoint
    from edgepress.models.zoo import build_model

    import torch

    spec = recipe.model
    torch.manual_seed(spec.seed)
    model = build_model(name=spec.name, entry=spec.entry, kwargs=spec.kwargs)
    info: dict[str, Any] = {}
    if spec.checkpoint is not None:
        info = load_checkpoint(path=spec.checkpoint, model=model)
        log(f"loaded checkpoint {spec.checkpoint}: {info}")
    else:
        log("no checkpoint: the model starts from its initial weights")
    out = work_dir / ARTIFACT_FILE["torch"]
    builder = {"name": spec.name, "entry": spec.entry, "kwargs": dict(spec.kwargs)}
    if sample is not None and len(sample) > 1:  # what MACs are counted on, for a model with several inputs
        builder["inputs"] = {name: [list(v.shape), str(v.dtype)] for name, v in sample.items()}
    torch_artifact.save(out, model=model, builder={k: v for k, v in builder.items() if v is not None},
                        input_shape=input_shape)
    return StageOutput(artifact=Artifact(path=out, format="torch"),
                       metrics={"checkpoint": {k: v for k, v in info.items() if isinstance(v, (int, float, str))}})


def check_layer_names(recipe: Recipe, source: Artifact) -> None:
    """Layer names in stage settings must exist in the source model: checked before any stage runs
    (a later stage sees the same names, minus blocks an earlier prune_depth removed)."""
    hooks = [(spec, REGISTRY[spec.kind].check_names) for spec in recipe.stages if REGISTRY[spec.kind].check_names]
    if source.format != "torch" or not hooks:
        return
    from edgepress.io import torch_artifact

    model, _, _ = torch_artifact.load(source.path)
    for spec, check in hooks:
        try:
            check(spec.settings, model)
        except UserError as exc:
            raise UserError(f"stage {spec.name!r}: {exc.problem}", fix=exc.fix) from None


def decide_task(recipe: Recipe, data: DataProvider) -> Task:
    """How every stage will be judged, decided before any stage: the model is run once, on one sample, to learn
    its outputs; a metric that does not fit them, budgets of another metric, or labels past the model's classes
    are refused now."""
    from edgepress.recipe import check_budgets

    first = data.evaluation[0]
    outputs = output_infos(recipe, first.sample())
    task = resolve(recipe, outputs, first.targets)
    check_budgets(recipe, metric=task.metric)
    for spec in recipe.stages:
        check = REGISTRY[spec.kind].check_task
        if check is not None:
            try:
                check(spec.settings, task)
            except UserError as exc:
                raise UserError(f"stage {spec.name!r}: {exc.problem}", fix=exc.fix) from None
    if task.metric.key == "top1":
        chosen = next(o for o in outputs if o.name == (task.output or outputs[0].name))
        data.check_labels(chosen.shape[-1])
    return task


# Beside a stage folder (NN-name + this): what the targets measured of a stage that a failing target stopped.
INCOMPLETE_TARGETS = ".targets-incomplete.json"

# Ranks other than 0 wait at a barrier while rank 0 alone evaluates, exports, quantizes: far longer
# than the process group's default 30 minutes would allow on a big model. A rank 0 that dies instead
# is noticed sooner: torchrun then stops the other ranks.
STAGE_WAIT_S = 4 * 3600


class _StageLog:
    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        if message.strip():
            self.fh.write(f"{time.strftime('%H:%M:%S')} {message.rstrip()}\n")
            self.fh.flush()

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:  # a full disk: the stage's error says so; this log goes with its folder
            pass


class Pipeline:
    def __init__(self, recipe: Recipe, *, out_dir: Path, force: bool = False, rerun_from: str | None = None,
                 adopt: bool = False) -> None:
        """A rerun keeps the stage folders whose inputs, settings and code are unchanged (see resume.py);
        `force` redoes every stage, `rerun_from` that stage and all after it. `adopt` lets the run write into an
        existing folder of the user's (beside their files, never over them; see run_folder.py)."""
        self.recipe = recipe
        self.out_dir = Path(os.path.abspath(out_dir))
        self.folder = RunFolder(self.out_dir, adopt=adopt)
        self.force = force
        self.rerun_from = rerun_from
        self.records: list[dict[str, Any]] = []
        self.artifacts: dict[str, Artifact] = {}
        self.reference_outputs: list[dict[str, np.ndarray]] | None = None  # every output by name, per set
        self.task: Task | None = None
        self.reference_metrics: dict[str, Any] | None = None
        self.onnx_reference_metrics: dict[str, Any] | None = None  # of recipe.onnx_reference_stage, once measured
        self.targets: dict[str, Any] = {}
        # What each evaluating target answered, by (stage, target, set): a converted model (an .ort) is compared
        # with its source on the same device, the same kernels, so only the conversion can differ.
        self.target_outputs: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}

    def prepare(self, *, probe_targets: bool = True) -> DataProvider:
        """Everything that can fail on bad input, checked before any stage runs."""
        resume.check_from(self.rerun_from, ["model"] + [s.name for s in self.recipe.stages])
        input_shape = input_shape_of(self.recipe)
        data = DataProvider(self.recipe.data, input_shape=input_shape, tokenizer=tokenizer_of(self.recipe),
                            input_names=input_names_of(self.recipe))
        needs = {need for stage in self.recipe.stages for need in REGISTRY[stage.kind].needs}
        data.load_all(calibration="calibration" in needs, training="training" in needs)
        self.task = decide_task(self.recipe, data)
        if probe_targets and distributed.is_main():
            self.targets = on_target.open_targets(self.recipe)
        return data

    def run(self) -> RunResult | None:
        """The report; None on the ranks other than 0 of a torchrun launch, which only help train."""
        distributed.init()  # under torchrun; the CLI has joined already, a caller of Pipeline may not have
        if not distributed.is_main():
            return self._run(main=False)
        self.folder.check()
        self.folder.make()
        try:
            with output_lock(self.out_dir):  # rank 0 alone writes the folder
                return self._run(main=True)
        except OSError as exc:
            if exc.errno is None or not str(exc.filename or "").startswith(str(self.out_dir)):
                raise
            raise write_error(self.out_dir, exc, doing="writing the run's files") from None
        finally:
            self.folder.remove_if_untouched()

    def _run(self, *, main: bool) -> RunResult | None:
        recipe = self.recipe
        if main:
            say(f"recipe {recipe.name}: {1 + len(recipe.stages)} stages -> {self.out_dir}")
        data = self.prepare()
        steps = [("model", "model", None)] + [(s.name, s.kind, s) for s in recipe.stages]
        names = [name for name, _, _ in steps]
        redo_from = 0 if self.force else names.index(self.rerun_from) if self.rerun_from else len(steps)
        if main:
            # Everything the run will write, claimed before the first stage: a clash with a user's file in an
            # adopted folder is refused now, not after an hour of training.
            stage_folders = [f"{index:02d}-{name}" for index, name in enumerate(names)]
            self.folder.claim(*stage_folders, *(f".resume-{f}" for f in stage_folders),
                              *(f"{f}{INCOMPLETE_TARGETS}" for f in stage_folders), *report.FIXED_FILES)
            self.folder.remove_leftovers()  # of a killed run; the lock keeps other runs out
            key = resume.first_key(recipe, data)
        current: Artifact | None = None
        for index, (name, kind, spec) in enumerate(steps):
            folder = self.out_dir / f"{index:02d}-{name}"
            resume_dir = self.out_dir / f".resume-{folder.name}"
            kept = None
            if main:
                source_sha256 = resume.file_sha256(current.path) if current else ""
                if spec is not None:
                    timed = REGISTRY[kind].timed is not None and REGISTRY[kind].timed(spec.settings)
                    reads_targets = REGISTRY[kind].reads_targets is not None and REGISTRY[kind].reads_targets(spec.settings)
                    key = resume.next_key(key, source_sha256=source_sha256, name=name, kind=kind,
                                          settings=spec.settings, timing_threads=recipe.target.threads if timed else None,
                                          target_names=tuple(t.name for t in recipe.targets) if reads_targets else None)
                kept = resume.reusable(folder, key=key) if index < redo_from else None
            redo = distributed.from_main(kept is None)  # the other ranks train along only what rank 0 redoes
            if not main:
                if redo:
                    self._train_along(kind=kind, spec=spec, source=current, data=data, resume_dir=resume_dir)
                distributed.barrier(timeout_s=STAGE_WAIT_S)  # rank 0 has committed the stage folder
                output_format = REGISTRY[kind].output_format if spec else ("onnx" if recipe.model.onnx else "torch")
                current = Artifact(path=folder / ARTIFACT_FILE[output_format], format=output_format)
                self.artifacts[name] = current
                continue
            if kept is not None:
                record = kept.record
                say(f"[{index + 1}/{len(steps)}] {kind} -> {folder.name}: kept, finished earlier from the same "
                    "input, settings and code")
                self._keep(record, kept.outputs)
                current = Artifact(path=folder / Path(record["artifact"]).name, format=record["format"])
                self.artifacts[name] = current
                self._retime(record, kept=kept, artifact=current, stage_key=key, data=data, folder=folder)
                if spec is None:
                    check_layer_names(recipe, current)  # the stages' settings may have changed since
                shutil.rmtree(resume_dir, ignore_errors=True)
                distributed.barrier()
                continue
            say(f"[{index + 1}/{len(steps)}] {kind} -> {folder.name}")
            with atomic.atomic_dir(folder) as work:
                log = _StageLog(work / "stage.log")
                try:
                    ctx = self._stage_context(data=data, work_dir=work, log=log, resume_dir=resume_dir,
                                              source_sha256=source_sha256)
                    started = time.monotonic()
                    if spec is None:
                        first = data.evaluation[0]
                        output = build_source(recipe, work_dir=work, input_shape=data.input_shape, log=log,
                                              sample=first.sample() if isinstance(first.sample(), dict) else None)
                        check_layer_names(recipe, output.artifact)
                    else:
                        output = REGISTRY[kind].run(current, spec.settings, ctx)
                    seconds = time.monotonic() - started
                    record, produced, target_keys = self._measure(
                        name=name, kind=kind, output=output, data=data, folder=folder, seconds=seconds, log=log,
                        stage_key=key)
                    atomic.write_json(work / "metrics.json", record["metrics"])
                    resume.save(work, key=key, record=record, outputs=produced, target_keys=target_keys)
                except Exception as exc:
                    self._raise_if_full(exc, work, doing=f"stage {name!r} was running")
                    raise
                finally:
                    log.close()
            current = Artifact(path=folder / output.artifact.path.name, format=output.artifact.format)
            self.artifacts[name] = current
            shutil.rmtree(resume_dir, ignore_errors=True)  # the stage is complete: its checkpoints are spent
            self.records.append(record)
            say(f"    {_one_line_metrics(record['metrics'], self.task)}")
            distributed.barrier()  # the other ranks go on from the artifact just committed
        return self._finish() if main else None

    def _retime(self, record: dict[str, Any], *, kept: resume.Kept, artifact: Artifact, stage_key: str,
                data: DataProvider, folder: Path) -> None:
        """A kept stage's numbers on the targets whose settings changed (or that are new), measured alone; its
        record in the folder is rewritten only once they all succeeded."""
        keys, measured = self._time_on_targets(record, artifact=artifact, stage_key=stage_key, data=data,
                                               produced=kept.outputs, folder=folder, measured_under=kept.target_keys)
        if not measured and keys == kept.target_keys:
            return
        say(f"    re-timed on {', '.join(measured) or 'no target'}: their settings or [bench] changed")
        atomic.write_json(folder / "metrics.json", record["metrics"])
        resume.save(folder, key=stage_key, record=record, outputs=None, target_keys=keys)

    def _stage_context(self, *, data: DataProvider, work_dir: Path, log, resume_dir: Path,
                       source_sha256: str) -> StageContext:
        """What a stage may know: the run's data, task and finished stages, and from the recipe only where its
        models run (its targets, primary first, and their threads) and the reference stage."""
        return StageContext(data=data, work_dir=work_dir, log=log, resume_dir=resume_dir, source_sha256=source_sha256,
                            artifacts=dict(self.artifacts), task=self.task,
                            targets=tuple(target.name for target in self.recipe.targets),
                            threads=self.recipe.target.threads, reference_stage=self.recipe.reference_stage)

    def _train_along(self, *, kind: str, spec, source: Artifact | None, data: DataProvider, resume_dir: Path) -> None:
        """A rank other than 0 trains its share of a training stage in lock-step with rank 0 (same
        source artifact, same resume folder), into a scratch folder that is then discarded; it skips
        the other stages, whose work rank 0 does alone."""
        if spec is None or "training" not in REGISTRY[kind].needs:
            return
        with tempfile.TemporaryDirectory(prefix=f"edgepress-rank{distributed.rank()}-") as scratch:
            ctx = self._stage_context(data=data, work_dir=Path(scratch), log=lambda _: None, resume_dir=resume_dir,
                                      source_sha256=resume.file_sha256(source.path) if source else "")
            REGISTRY[kind].run(source, spec.settings, ctx)

    def _raise_if_full(self, exc: Exception, folder: Path, *, doing: str) -> None:
        if isinstance(exc, UserError) or not atomic.out_of_space(exc, folder):
            return
        free = shutil.disk_usage(folder).free
        raise UserError(f"the disk holding {self.out_dir} is full ({free / 2**20:.1f} MiB free) while {doing}",
                        fix=f"free space on it (or pass another {OUT}) and rerun the same command: finished stages "
                            "are kept") from None

    def _keep(self, record: dict[str, Any], produced: list[dict[str, np.ndarray]]) -> None:
        """A stage reused from an earlier run counts as if it had just run."""
        if record["name"] == self.recipe.reference_stage:
            self.reference_outputs = produced
            self.reference_metrics = record["metrics"]
        self._size_ratio(record["name"], record["metrics"])
        self.records.append(record)

    def _measure(self, *, name: str, kind: str, output: StageOutput, data: DataProvider, folder: Path,
                 seconds: float, log, stage_key: str) -> tuple[dict[str, Any], list[dict[str, np.ndarray]], dict[str, str]]:
        """The stage's record for the report, and its evaluation outputs (per set)."""
        artifact = output.artifact
        metrics: dict[str, Any] = {}
        produced = [evaluation.outputs(artifact, labeled, batch_size=self.recipe.data.batch_size)
                    for labeled in data.evaluation]
        if name == self.recipe.reference_stage:
            self.reference_outputs = produced
        references = self.reference_outputs or [None] * len(produced)
        per_set = {labeled.name: self.task.score(labeled, out, ref)
                   for labeled, out, ref in zip(data.evaluation, produced, references)}
        primary = per_set[data.evaluation[0].name]
        metrics.update({key: primary[key] for key in self.task.keys if key in primary})
        metrics.update(measure.structure(artifact))
        metrics["evaluation"] = per_set
        metrics.update(output.metrics)
        if name == self.recipe.reference_stage:
            self.reference_metrics = metrics
        self._size_ratio(name, metrics)
        record = {
            "name": name,
            "kind": kind,
            "artifact": f"{folder.name}/{artifact.path.name}",
            "format": artifact.format,
            "sha256": resume.file_sha256(artifact.path),
            "seconds": round(seconds, 3),
            "metrics": metrics,
        }
        target_keys, _ = self._time_on_targets(record, artifact=artifact, stage_key=stage_key, data=data,
                                               produced=produced, folder=folder, measured_under={})
        log(f"metrics: {json.dumps(metrics)}")
        return record, produced, target_keys

    def _size_ratio(self, name: str, metrics: dict[str, Any]) -> None:
        """A stage after the ONNX reference gets its size over the reference's; the reference remembers its own."""
        if name == self.recipe.onnx_reference_stage:
            self.onnx_reference_metrics = metrics
        elif self.onnx_reference_metrics is not None and "size_bytes" in metrics:
            metrics["size_ratio"] = metrics["size_bytes"] / self.onnx_reference_metrics["size_bytes"]

    def _latency_reference(self, name: str) -> Artifact | None:
        """The artifact a stage's ONNX model is timed against: the ONNX reference, for the stages after it."""
        if self.onnx_reference_metrics is None or name == self.recipe.onnx_reference_stage:
            return None
        return self.artifacts.get(self.recipe.onnx_reference_stage)

    def _time_on_targets(self, record: dict[str, Any], *, artifact: Artifact, stage_key: str, data: DataProvider,
                         produced: list[dict[str, np.ndarray]], folder: Path,
                         measured_under: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """Fill the record's per-target numbers of an ONNX artifact, measuring only the targets whose key differs
        from the one their numbers in the record were `measured_under` (all of them for a new stage); targets no
        longer in the recipe are dropped. Returns ({target: key}, the targets measured now)."""
        if not artifact.runs_on_onnxruntime:
            return {}, []
        metrics, name = record["metrics"], record["name"]
        listed = [spec for spec in self.recipe.targets if not spec.stages or name in spec.stages]
        reference = self._latency_reference(name)
        reference_sha256 = resume.file_sha256(reference.path) if reference else None
        keys = {spec.name: resume.target_key(stage_key, target=spec, bench=self.recipe.bench,
                                             reference_sha256=reference_sha256) for spec in listed}
        previous = metrics.get("targets", {})
        stale = [spec for spec in listed if spec.name not in previous or measured_under.get(spec.name) != keys[spec.name]]
        references = self.reference_outputs or [None] * len(produced)
        found = self._on_targets(artifact, stage=name, targets=stale, data=data, host_metrics=metrics,
                                 references=references, host_outputs=produced,
                                 kept_in=self.out_dir / f"{folder.name}{INCOMPLETE_TARGETS}") if stale else {}
        metrics["targets"] = {spec.name: found.get(spec.name, previous.get(spec.name)) for spec in listed}
        for key in ("latency_ms", "latency_ratio", "peak_memory_bytes"):
            metrics.pop(key, None)
        primary = metrics["targets"][self.recipe.target.name]
        if "latency_ms" in primary and not self.recipe.target.emulated:
            metrics["latency_ms"] = dict(primary["latency_ms"], runs=primary["runs"], threads=primary["threads"],
                                         batch=primary["batch"], target=self.recipe.target.name)
            for key in ("latency_ratio", "peak_memory_bytes"):
                if primary.get(key) is not None:
                    metrics[key] = primary[key]
        metrics.pop("warnings", None)
        warnings = slower_than_reference(metrics["targets"], kind=record["kind"])
        if warnings:
            metrics["warnings"] = warnings
            for line in warnings:
                say(f"    warning: {line}")
        return keys, [spec.name for spec in stale]

    def _on_targets(self, artifact: Artifact, *, stage: str, targets: list, data: DataProvider,
                    host_metrics: dict[str, Any], references: list[dict[str, np.ndarray] | None],
                    host_outputs: list[dict[str, np.ndarray]], kept_in: Path) -> dict[str, dict[str, Any]]:
        """{target name: timing and, where evaluated, quality} for an ONNX artifact. The primary target's
        quality is the host's (same ONNX Runtime build, all cores); other targets evaluate on the device.
        A target that fails (a device dying mid-run) fails the stage, whose folder is then not kept; what the
        targets measured of it until then, the dead one's timed runs included, is written to `kept_in`."""
        found: dict[str, dict[str, Any]] = {}
        for spec in targets:
            index = self.recipe.targets.index(spec)
            target = self.targets[spec.name] if spec.name in self.targets else on_target.open_target(spec.name)
            entry: dict[str, Any] = {"emulated": target.emulated}
            try:
                self._on_target(target, spec, index, entry, artifact=artifact, stage=stage, data=data, host_metrics=host_metrics,
                                references=references, host_outputs=host_outputs)
            except UserError as exc:
                if isinstance(exc, PartialMeasurement):
                    entry.update(exc.result)
                found[spec.name] = dict(entry, complete=False, error=exc.one_line())
                atomic.write_json(kept_in, {"stage": stage, "complete": False, "targets": found})
                raise UserError(f"stage {stage!r}: {exc.problem}; what the targets measured of this stage is kept "
                                f"in {kept_in}", fix=exc.fix) from None
            found[spec.name] = entry
        kept_in.unlink(missing_ok=True)  # an earlier run's, now measured in full
        return found

    def _on_target(self, target, spec, index: int, entry: dict[str, Any], *, artifact: Artifact, stage: str,
                   data: DataProvider, host_metrics: dict[str, Any], references: list[dict[str, np.ndarray] | None],
                   host_outputs: list[dict[str, np.ndarray]]) -> None:
        """One target's timing and quality of an ONNX artifact, added to `entry` as they arrive."""
        if spec.latency:
            entry.update(on_target.time_on(target, artifact, data.evaluation[0].sample(), spec=spec,
                                           bench=self.recipe.bench, reference=self._latency_reference(stage),
                                           reference_stage=self.recipe.onnx_reference_stage))
        if spec.evaluate:
            per_set = {}
            for labeled, reference, host in zip(data.evaluation, references, host_outputs):
                subset = labeled.head(spec.evaluate_samples)
                say(f"    evaluate {subset.name} on {target.name}")
                out = on_target.outputs_on(target, artifact, subset, batch_size=self.recipe.data.batch_size, spec=spec)
                count = len(next(iter(out.values())))
                per_set[subset.name] = self.task.score(subset, out, None if reference is None else _head(reference, count))
                # The same model's answers here against the host's on the same samples: where ARM kernels
                # and x86 ones part ways, whatever the reference says.
                per_set[subset.name]["same_as_host"] = self.task.same_answers(out, _head(host, count))
                self.target_outputs[(stage, spec.name, subset.name)] = out
                source = host_metrics.get("converted_from")
                if source in self.artifacts:
                    theirs = self._outputs_on(target, spec, stage=source, subset=subset)
                    per_set[subset.name]["same_as_source"] = self.task.same_answers(out, theirs)
            first = per_set[data.evaluation[0].name]
            entry.update({k: first[k] for k in self.task.keys + ("same_as_host", "same_as_source") if k in first})
            entry["evaluation"] = per_set
            primary_set, reference = data.evaluation[0], references[0]
            if primary_set.targets is not None and reference is not None and self.task.metric.score is not None:
                # A drop compares like with like: the reference on the same first samples.
                count = first["samples"]
                entry["reference_scores"] = self.task.metric.score(_head(reference, count),
                                                                   _head(primary_set.targets, count), self.task.output)
        elif index == 0:
            entry.update({k: host_metrics[k] for k in self.task.keys if k in host_metrics})

    def _outputs_on(self, target, spec, *, stage: str, subset) -> dict[str, np.ndarray]:
        """A finished stage's answers on this target: the ones it gave when it was evaluated here, else run now."""
        key = (stage, spec.name, subset.name)
        if key not in self.target_outputs:
            say(f"    evaluate {subset.name} on {target.name} with {stage}, to compare")
            self.target_outputs[key] = on_target.outputs_on(target, self.artifacts[stage], subset,
                                                            batch_size=self.recipe.data.batch_size, spec=spec)
        return self.target_outputs[key]

    def _target_checks(self, final: dict[str, Any]) -> list[dict[str, Any]]:
        """Each target's own budgets, on that target's numbers for the final stage."""
        checks = []
        for spec in self.recipe.targets:
            measured = final["metrics"].get("targets", {}).get(spec.name)
            if measured is None or not spec.budgets.limits():
                continue
            shared = {k: final["metrics"][k] for k in ("size_bytes", "size_ratio") if k in final["metrics"]}
            measured = {**shared, **measured}  # the file is the same everywhere
            reference = gate.reference_for(self.reference_metrics or {}, measured)
            for check in gate.evaluate(spec.budgets, final=measured, reference=reference,
                                       stage=f"{final['name']} on {spec.name}", user=self._user_metric()):
                checks.append(dict(vars(check), target=spec.name))
        return checks

    def _user_metric(self):
        return self.task.metric if ":" in self.task.metric.key else None

    def _finish(self) -> RunResult:
        final = self.records[-1]
        checks = gate.evaluate(self.recipe.budgets, final=final["metrics"], reference=self.reference_metrics or {},
                               stage=final["name"], user=self._user_metric())
        checks = [report_model.GateCheck(**vars(check)) for check in checks]
        checks += [report_model.GateCheck(**check) for check in self._target_checks(final)]
        result = report_model.Report(
            recipe=str(self.recipe.path),
            name=self.recipe.name,
            reference_stage=self.recipe.reference_stage,
            onnx_reference_stage=self.recipe.onnx_reference_stage,
            metric=self.task.metric.key,
            # What each of the metric's values means, so a reader needs no table (a user metric's included).
            metric_values=tuple(report_model.MetricValue(key=v.key, label=v.label, higher_is_better=v.higher_is_better,
                                                         unit=v.unit) for v in self.task.values),
            metric_higher_is_better=self.recipe.data.higher_is_better if self._user_metric() else None,
            metric_output=self.task.output or None,
            targets=tuple(report_model.TargetInfo(
                name=t.name, threads=t.threads, emulated=t.emulated, evaluate=t.evaluate, budgets=t.budgets.limits(),
                session=None if (t.denormals, t.disabled_optimizers) == ("keep", ()) else
                report_model.SessionSettings(denormals=t.denormals, disabled_optimizers=tuple(t.disabled_optimizers)))
                for t in self.recipe.targets),
            budgets=self.recipe.budgets.limits(),
            stages=tuple(report_model.Stage.from_json_dict(record, metric_values=self.task.keys)
                         for record in self.records),
            gate=report_model.Gate(stage=final["name"], checks=tuple(checks)),
        )
        self.folder.claim(*report.file_names(result))
        try:
            report.write_all(result, out_dir=self.out_dir)
        except Exception as exc:
            self._raise_if_full(exc, self.out_dir, doing="the report was written")
            raise
        return RunResult(report=result, out_dir=self.out_dir)


# What to try when a stage's model is surely slower than the ONNX reference, unless its StageDef says otherwise.
_WHEN_SLOWER = ("where its time goes is in the report's per-operator profile (report.html, or `edgepress bench "
                "--profile`): let ptq keep in float what measures faster there (float_where_faster = true) or "
                "name the slow nodes (nodes_to_exclude), or gate it with latency_ratio_max")


def slower_than_reference(targets: dict[str, Any], *, kind: str = "ptq") -> list[str]:
    """A warning for each (real) target where the stage's model is surely slower than the ONNX reference, its
    p50 ratio's whole interval above 1: an INT8 model slower than its FP32 source ships only knowingly."""
    advice = getattr(REGISTRY.get(kind), "when_slower", None) or _WHEN_SLOWER
    found = []
    for name, entry in targets.items():
        ratio = (entry or {}).get("latency_ratio")
        if entry.get("emulated") or not isinstance(ratio, dict) or ratio["ci95"][0] <= 1.0:
            continue
        found.append(f"on {name} this model is slower than {ratio['reference_stage']}'s: p50 {ratio['p50']:.2f}x "
                     f"[95% CI {ratio['ci95'][0]:.2f}-{ratio['ci95'][1]:.2f}]; {advice}")
    return found


def _one_line_metrics(metrics: dict[str, Any], task: Task) -> str:
    parts = [f"{value.label} {value.show(metrics[value.key])}" for value in task.metric.shown if value.key in metrics]
    if "snr_db" not in [v.key for v in task.metric.shown] and task.metric.key != "cosine" and "snr_db" in metrics:
        # how close to the reference, for any model
        parts.append(f"SNR {metrics['snr_db']:.1f} dB")
    parts.append(f"size {metrics['size_bytes'] / 1024:.1f} KiB")
    if "latency_ms" in metrics:
        parts.append(f"p50 {metrics['latency_ms']['p50']:.3f} ms, p90 {metrics['latency_ms']['p90']:.3f} ms")
    if "latency_ratio" in metrics:
        ratio = metrics["latency_ratio"]
        parts.append(f"{ratio['p50']:.2f}x {ratio['reference_stage']}'s p50 [95% CI {ratio['ci95'][0]:.2f}-"
                     f"{ratio['ci95'][1]:.2f}]")
    return ", ".join(parts)


def _head(arrays: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {name: values[:count] for name, values in arrays.items()}
