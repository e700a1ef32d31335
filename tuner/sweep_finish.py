"""What happens when a study's trials are done: records on the sweep run, export, validation, tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from rich.console import Console

from tuner.display import console_table, describe_values
from tuner.export import export_preset
from tuner.model_registry import register_model
from tuner.objective import trial_config
from tuner.pbt_population import describe_lineage, events_table, lineage_values
from tuner.prepare import Prepared
from tuner.provenance import study_provenance
from tuner.report_card import AGGREGATE, CARD_MD, build_card, card_summary, write_card
from tuner.stats import Comparison, compare
from tuner.study import best_trial, budget_status, objective_label
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
        c for c in table.columns if c.startswith(("value", "return_"))
    ]
    console.print(
        console_table(
            table.head(TOP_TRIALS)[list(dict.fromkeys(columns))],
            f"top {TOP_TRIALS} trials of {study.study_name}",
            console.width,
            [c for c in columns if c.startswith(("value_", "return_"))] + ["duration_s", "pruned_step"],
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
        f"best trial {best.number}: {objective_label(study)} {best.values[0]:.2f} "
        f"with {describe_values(values)}"
    )
    schedule = lineage_values(best)
    if schedule is not None:  # population-based training: the winner's whole lineage is the result
        console.print(
            f"its lineage (population-based training), exported as schedules:\n{describe_lineage(best)}"
        )
        values = schedule

    tuned_config = trial_config(prepared.setup, values, settings.seeds[0])
    if settings.export:
        envs = [task.name for task in prepared.setup.tasks]
        provenance = study_provenance(
            settings,
            study,
            prepared.setup.tracking["experiment"],
            [task.budget_steps for task in prepared.setup.tasks],
        )
        path = export_preset(
            best,
            tuned_config,
            provenance,
            settings.seeds[0],
            settings.export_dir,
            settings.export_name,
            envs,
        )
        env_choice = f" env={envs[0]} (or {', '.join(envs[1:])})" if envs else ""
        console.print(f"exported to {path}: python -m tuner.train experiment={path.stem}{env_choice}")
        sweep.log_artifact(path)

    if settings.validate_seeds:
        _validate(prepared, sweep, console, values)


def validation_configs(prepared: Prepared, values: dict) -> dict[str, tuple[dict, dict]]:
    """env → (default config, tuned config: ``values`` applied) of the held-out validation: every env of
    a multi-env study, else the one env."""
    setup, seed = prepared.setup, prepared.settings.validate_seeds[0]
    if setup.tasks:
        return {
            task.name: (trial_config(setup, {}, seed, task), trial_config(setup, values, seed, task))
            for task in setup.tasks
        }
    return {env_name(prepared.config): (trial_config(setup, {}, seed), trial_config(setup, values, seed))}


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


def _validate(prepared: Prepared, sweep: RunRecorder, console: Console, values: dict) -> None:
    """Default vs tuned (``values``) on the held-out seeds of every env, nested under the sweep run, with
    the table and the report card's short form printed."""
    settings, setup = prepared.settings, prepared.setup
    configs = validation_configs(prepared, values)
    budgets = ", ".join(f"{c[0]['total_steps']}" for c in configs.values())
    console.print(
        f"held-out validation: default and tuned configs on seeds {list(settings.validate_seeds)} "
        f"({budgets} env steps each{' on ' + ', '.join(configs) if setup.tasks else ''})"
    )
    runs = {
        label: start_run(
            **setup.tracking,
            run_name=f"validation-{label}",
            tags={"kind": "validation", "config": label},
            parent_run_id=sweep.run_id,
        )
        for label in ("default", "tuned")
    }
    comparisons, scores, tuned_runs = {}, {}, {}
    with runs["default"] as default_run, runs["tuned"] as tuned_run:
        parents = {"default": default_run.run_id, "tuned": tuned_run.run_id}
        for env, (default_config, tuned_config) in configs.items():
            validation = run_validation(
                default_config, tuned_config, settings.validate_seeds, parents, settings.n_workers,
                env if setup.tasks else None,
            )  # fmt: skip
            comparisons[env], scores[env] = validation.comparison, validation.scores
            tuned_runs[env] = validation.run_ids["tuned"][0]
            metric = f"validation/{env}/seed_return" if setup.tasks else "validation/seed_return"
            for label, run in (("default", default_run), ("tuned", tuned_run)):
                for index, value in enumerate(scores[env][label]):
                    run.log_metric(metric, value, index)
    table = _record_validation(prepared, sweep, console, comparisons, scores)
    if settings.register:
        _register_tuned(prepared, sweep, console, tuned_runs, table)


def _register_tuned(
    prepared: Prepared, sweep: RunRecorder, console: Console, tuned_runs: dict[str, str], table: pd.DataFrame
) -> None:
    """Register each env's tuned model (the run of its first held-out seed) in MLflow's Model Registry,
    with the validation table and the exported preset in the description."""
    settings, study = prepared.settings, prepared.study
    preset = Path(settings.export_dir) / f"{settings.export_name}.yaml"
    description = (
        f"Tuned by rltune: study {study.study_name!r}, sweep run {sweep.run_id}. Held-out validation "
        f"(seeds {list(settings.validate_seeds)}):\n\n{table.to_markdown(index=False)}\n"
    )
    if settings.export and preset.is_file():
        description += f"\nPreset {preset.name}:\n\n```yaml\n{preset.read_text()}```\n"
    for env, run_id in tuned_runs.items():
        name = settings.export_name if len(tuned_runs) == 1 else f"{settings.export_name}-{env}"
        tags = {
            "study": study.study_name,
            "sweep_run": sweep.run_id,
            "env": env,
            "seed": settings.validate_seeds[0],
        }
        uri = register_model(prepared.setup.tracking["uri"], name, run_id, description, tags)
        sweep.set_tags({f"registered_model.{env}": uri})
        console.print(f"registered the tuned model ({env}, seed {settings.validate_seeds[0]}) as {uri}")


def _record_validation(
    prepared: Prepared,
    sweep: RunRecorder,
    console: Console,
    comparisons: dict[str, Comparison],
    scores: dict[str, dict[str, list[float]]],
) -> pd.DataFrame:
    """The validation table (a row per env and config, and the normalised aggregate of several envs),
    the report card and the sweep run's validation metrics; returns the table."""
    settings, tasks = prepared.settings, prepared.setup.tasks
    references = {t.name: (t.random_score, t.reference_score) for t in tasks} or reference_scores(
        prepared.config
    )
    if tasks:
        pooled = {
            label: [s for t in tasks for s in t.normalize(scores[t.name][label])]
            for label in ("default", "tuned")
        }
        overall = compare(pooled["default"], pooled["tuned"], seed=0)
        table = pd.concat(
            [validation_table(c).assign(env=env) for env, c in comparisons.items()]
            + [validation_table(overall).assign(env=AGGREGATE)],
            ignore_index=True,
        )
        table = table[["env", *table.columns[:-1]]]
    else:
        overall = next(iter(comparisons.values()))
        table = validation_table(overall)
    footnote = validation_footnote(overall.confidence)
    budget = sum(t.budget_steps for t in tasks) or settings.budget_steps
    card = build_card(
        {env: s["default"] for env, s in scores.items()}, {env: s["tuned"] for env, s in scores.items()},
        prepared.study, len(settings.seeds), budget, references,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for path in [*write_validation_table(table, Path(tmp), footnote), *write_card(card, tmp)]:
            sweep.log_artifact(path)
    sweep.log_metrics(
        {
            "validation/default_iqm": overall.baseline_iqm,
            "validation/tuned_iqm": overall.candidate_iqm,
            "validation/difference": overall.difference,
        },
        0,
    )
    sweep.set_tags({"validation.significant": overall.significant})
    title = "held-out validation: default vs tuned"
    droppable = ("std", "mean")
    console.print(console_table(table, title, console.width, droppable, f"{VALIDATION_MD} on the sweep run"))
    console.print(footnote)
    console.print(f"{card_summary(card)}\n(the whole card: {CARD_MD} on the sweep run)")
    return table
