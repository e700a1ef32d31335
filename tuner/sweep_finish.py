"""What happens when a study's trials are done: records on the sweep run, export, validation, tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

from tuner.display import console_table, describe_values
from tuner.export import export_preset
from tuner.objective import trial_config
from tuner.pbt_population import describe_lineage, events_table, lineage_values
from tuner.prepare import Prepared
from tuner.report_card import CARD_MD, build_card, card_summary, write_card
from tuner.study import best_trial, budget_status
from tuner.sweep_report import (
    TRIALS_MD,
    VALIDATION_MD,
    trials_table,
    validation_footnote,
    validation_table,
    write_optuna_plots,
    write_pbt_events_table,
    write_trials_table,
    write_validation_table,
)
from tuner.tracking import RunRecorder, start_run
from tuner.trial_record import VALUES_ATTR
from tuner.ui_links import print_links
from tuner.validate import run_validation

TOP_TRIALS = 10
# The rest, fail_reason included (each failure's reason was printed once, on its trial's line): trials.md.
CONSOLE_COLUMNS = ("number", "state", "value", "duration_s", "pruned_step")


def finish_sweep(prepared: Prepared, sweep: RunRecorder, console: Console) -> None:
    """Trials table, plots, best params and value on the sweep run; export; validation; console tables."""
    study, settings = prepared.study, prepared.settings
    status = budget_status(study)
    table = trials_table(study)
    events = events_table(study)
    with tempfile.TemporaryDirectory() as tmp:
        written = [*write_trials_table(table, tmp), *write_optuna_plots(study, tmp)]
        if not events.empty:
            written += write_pbt_events_table(events, tmp)
        for path in written:
            sweep.log_artifact(path)
    sweep.log_metrics(
        {
            "sweep/complete": status.complete,
            "sweep/pruned": status.pruned,
            "sweep/failed": status.failed,
        },
        0,
    )
    columns = [c for c in CONSOLE_COLUMNS if c in table.columns] + [
        c for c in table.columns if c.startswith("value")
    ]
    console.print(
        console_table(
            table.head(TOP_TRIALS)[list(dict.fromkeys(columns))],
            f"top {TOP_TRIALS} trials of {study.study_name}",
            console.width,
            [c for c in columns if c.startswith("value_")] + ["duration_s", "pruned_step"],
            f"{TRIALS_MD} on the sweep run",
        )
    )
    console.print(
        f"{status.complete} complete, {status.pruned} pruned, {status.failed} failed of {settings.n_trials}"
    )

    _export_and_validate(prepared, sweep, console)
    uri = prepared.setup.tracking["uri"]
    print_links(console, uri, sweep.experiment_id, sweep.run_id, "the sweep run")


def _export_and_validate(prepared: Prepared, sweep: RunRecorder, console: Console) -> None:
    """The best trial on the sweep run, its exported preset and its held-out validation."""
    study, settings = prepared.study, prepared.settings
    best = best_trial(study)
    if best is None:
        console.print("[yellow]no trial completed: nothing to export or validate[/yellow]")
        return
    values = best.user_attrs.get(VALUES_ATTR, {})
    sweep.log_metrics({"best/value": best.values[0], "best/trial": best.number}, 0)
    sweep.set_tags({f"best.{k}": v for k, v in values.items()} | {"best.trial": best.number})
    console.print(
        f"best trial {best.number}: mean return {best.values[0]:.2f} with {describe_values(values)}"
    )
    schedule = lineage_values(best)
    if schedule is not None:  # population-based training: the winner's whole lineage is the result
        console.print(
            f"its lineage (population-based training), exported as schedules:\n{describe_lineage(best)}"
        )
        values = schedule

    tuned_config = trial_config(prepared.setup, values, settings.seeds[0])
    if settings.export:
        path = export_preset(
            best, tuned_config, study.study_name, settings.seeds[0], settings.export_dir, settings.export_name
        )
        console.print(f"exported to {path}: python -m tuner.train experiment={path.stem}")
        sweep.log_artifact(path)

    if settings.validate_seeds:
        _validate(prepared, sweep, console, tuned_config)


def env_name(config: dict) -> str:
    """The env config's name (``cartpole``), the card's row label."""
    return str(config["env"].get("name") or config["env"]["id"])


def reference_scores(config: dict) -> dict[str, tuple[float, float]] | None:
    """env → (random score, reference score of the tuned algorithm) from the env config, or None when
    either is missing (the card then has no normalised aggregate)."""
    env = config["env"]
    random_score = env.get("random_score")
    reference = (env.get("reference") or {}).get(config["algo"]["name"], {}).get("score")
    if random_score is None or reference is None or reference == random_score:
        return None
    return {env_name(config): (float(random_score), float(reference))}


def _validate(prepared: Prepared, sweep: RunRecorder, console: Console, tuned_config: dict) -> None:
    """Default vs tuned on the held-out seeds, nested under the sweep run, with the table printed."""
    settings, setup = prepared.settings, prepared.setup
    default_config = trial_config(setup, {}, settings.validate_seeds[0])
    console.print(
        f"held-out validation: default and tuned configs on seeds {list(settings.validate_seeds)} "
        f"({settings.budget_steps} env steps each)"
    )
    parents: dict[str, str | None] = {}
    runs = {}
    for label in ("default", "tuned"):
        runs[label] = start_run(
            **setup.tracking,
            run_name=f"validation-{label}",
            tags={"kind": "validation", "config": label},
            parent_run_id=sweep.run_id,
        )
    with runs["default"] as default_run, runs["tuned"] as tuned_run:
        parents = {"default": default_run.run_id, "tuned": tuned_run.run_id}
        comparison, scores = run_validation(
            default_config, tuned_config, settings.validate_seeds, parents, settings.n_workers
        )
        for label, run in (("default", default_run), ("tuned", tuned_run)):
            for index, value in enumerate(scores[label]):
                run.log_metric("validation/seed_return", value, index)
    table = validation_table(comparison)
    footnote = validation_footnote(comparison.confidence)
    card = build_card(
        {env_name(prepared.config): scores["default"]}, {env_name(prepared.config): scores["tuned"]},
        prepared.study, len(settings.seeds), settings.budget_steps, reference_scores(prepared.config),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for path in [*write_validation_table(table, Path(tmp), footnote), *write_card(card, tmp)]:
            sweep.log_artifact(path)
    sweep.log_metrics(
        {
            "validation/default_iqm": comparison.baseline_iqm,
            "validation/tuned_iqm": comparison.candidate_iqm,
            "validation/difference": comparison.difference,
        },
        0,
    )
    sweep.set_tags({"validation.significant": comparison.significant})
    title = "held-out validation: default vs tuned"
    droppable = ("std", "mean")
    console.print(console_table(table, title, console.width, droppable, f"{VALIDATION_MD} on the sweep run"))
    console.print(footnote)
    console.print(f"{card_summary(card)}\n(the whole card: {CARD_MD} on the sweep run)")
