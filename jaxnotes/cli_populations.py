"""``python -m train --k-fold K`` and ``--search N``: chapter 1's model selection from the runner.

Both train one population (``jaxnotes.population``: every fold, or every trial, a member of one
compiled program) of the chosen model with the flags' settings, on the data set's training
split (the test split is never touched: the notes' 70% development part):

    python -m train --model lenet --k-fold 5
    python -m train --model mlp --search 100 --search-space "lr=1e-3:1,wd=1e-6:1e-2,dropout=0:0.8"

They print one line per member, write ``folds.jsonl`` / ``trials.jsonl``, a plot (``folds.png``:
every fold's validation curve; ``search.png``: the score against each hyper-parameter) and
``summary.json``, and end with one JSON line (the best setting, the folds' mean and spread).
"""

from __future__ import annotations

import math
from typing import Any

from jaxnotes.config import VALUE_RULES

# --search-space names: the short ones the flag takes, and the parameters they set
NAMES = {
    "lr": "learning_rate",
    "learning_rate": "learning_rate",
    "wd": "weight_decay",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "dropout": "dropout",
    "width": "width",
}
LOG_BY_DEFAULT = ("learning_rate", "weight_decay")
DEFAULT_SPACE = "lr=1e-3:1,wd=1e-6:1e-1"


class SpaceError(ValueError):
    """A --search-space that cannot be sampled (the message states the rule)."""


def parse_space(text: str) -> dict[str, Any]:
    """``"lr=1e-3:1,wd=1e-6:1e-2:log,dropout=0:0.5,width=32|64,momentum=0.9"`` -> a space.

    ``name=low:high`` samples log-uniformly for lr and wd and uniformly otherwise (``:log`` or
    ``:uniform`` chooses); ``name=a|b|c`` picks among choices; ``name=value`` fixes it.
    """
    space: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise SpaceError(f"--search-space: {item!r} must be NAME=LOW:HIGH, NAME=A|B or NAME=X")
        if key not in NAMES:
            raise SpaceError(
                f"--search-space: unknown parameter {key!r}; expected one of {', '.join(NAMES)}"
            )
        name = NAMES[key]
        try:
            space[name] = _parse_value(name, value)
        except ValueError as error:
            raise SpaceError(f"--search-space: {key}={value}: {error}") from None
    if not space:
        raise SpaceError("--search-space is empty; e.g. " + DEFAULT_SPACE)
    return space


def _parse_value(name: str, value: str):
    if "|" in value:
        choices = [float(v) for v in value.split("|")]
        return [int(v) for v in choices] if name == "width" else choices
    parts = value.split(":")
    if len(parts) == 1:
        return float(parts[0])
    if len(parts) not in (2, 3):
        raise ValueError("a range is LOW:HIGH or LOW:HIGH:log|uniform")
    low, high = float(parts[0]), float(parts[1])
    kind = parts[2] if len(parts) == 3 else ("log" if name in LOG_BY_DEFAULT else "uniform")
    if kind not in ("log", "uniform"):
        raise ValueError(f"the scale must be log or uniform, got {kind!r}")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"the range must have finite LOW <= HIGH, got {low:g} > {high:g}")
    if kind == "log" and low <= 0:
        raise ValueError("a log-uniform range needs LOW > 0")
    for end in (low, high):  # the one table of ranges (jaxnotes.config.VALUE_RULES)
        rule = VALUE_RULES[name]
        if not rule.holds(end):
            raise ValueError(f"{name} must be {rule.text}, got {end:g}")
    return (kind, low, high)


def check(args, config) -> None:
    """The population flags' rules (raises SpaceError / ValueError with the rule)."""
    from jaxnotes import members, selection

    if args.k_fold is not None and args.search is not None:
        raise ValueError("--k-fold and --search are two experiments: choose one")
    if args.search_space is not None and args.search is None:
        raise ValueError("--search-space needs --search N")
    if args.k_fold is not None and args.k_fold < 2:
        raise ValueError(f"--k-fold must be >= 2, got {args.k_fold}")
    if args.search is not None:
        if args.search < 1:
            raise ValueError(f"--search must be >= 1 trials, got {args.search}")
        space = parse_space(args.search_space or DEFAULT_SPACE)
        if "width" in space and args.model != "mlp":
            raise SpaceError("--search-space: width applies to --model mlp only")
        sample = selection.sample_space(space, args.search, args.seed)  # every value in range
        selection.check_searchable(sample, config, None)
    members.check_population_config(config)
    if args.steps_per_dispatch != 1 or args.parallel != "sharded":
        raise ValueError(
            "--k-fold / --search split the members over --devices; they take neither "
            "--steps-per-dispatch nor --parallel"
        )


def run(args, config, workdir, log=print) -> dict:
    """Run the K-fold or search population; returns the summary line's dict."""
    from jaxnotes import data as jdata
    from jaxnotes import selection
    from jaxnotes import workdir as workdirs

    # A new folder (workdirs.NewRun) is made by the population once its checks passed.
    dataset = jdata.load(config.dataset, "train")
    if args.k_fold is not None:
        cv = selection.k_fold_cv(
            config.model, dataset, args.k_fold, config=config, seed=config.seed,
            devices=args.devices, workdir=workdir, resume=args.resume,
            overwrite=args.overwrite, log=log,
        )  # fmt: skip
        folder = cv.population.workdir
        _table([{"fold": i, **r} for i, r in enumerate(cv.population.rows)], log)
        if all(r["diverged"] for r in cv.population.rows):
            raise _all_diverged(cv.population.rows, "fold")
        if folder is not None:
            _save_plot(lambda path: selection.plot_k_fold(cv, path), folder / "folds.png")
        summary = {
            **_common(config, cv.population.summary),
            "k_fold": cv.k,
            "val_acc": cv.mean["val_acc"],
            "val_acc_std": cv.std["val_acc"],
            "val_loss": cv.mean["val_loss"],
            "train_loss": cv.mean["train_loss"],
            "train_acc": cv.mean["train_acc"],
        }
    else:
        space = parse_space(args.search_space or DEFAULT_SPACE)
        rows = selection.random_search(
            config.model, dataset, space, args.search, config=config, seed=config.seed,
            devices=args.devices, workdir=workdir, resume=args.resume,
            overwrite=args.overwrite, log=log,
        )  # fmt: skip
        folder = workdir.path if isinstance(workdir, workdirs.NewRun) else workdir
        _table(rows, log)
        if folder is not None:  # trials.jsonl: written by the search, best first
            _save_plot(lambda path: selection.plot_search(rows, path), folder / "search.png")
        if all(r["diverged"] for r in rows):
            raise _all_diverged(rows, "trial")
        best = rows[0]
        summary = {
            **_common(config, None),
            "search": args.search,
            "best": best,
            "val_acc": best["val_acc"],
            "train_loss": best["train_loss"],
            "train_acc": best["train_acc"],
            "diverged": sum(r["diverged"] for r in rows),
        }
    if folder is not None:
        summary["workdir"] = str(folder)
    return summary


def _all_diverged(rows: list[dict], what: str):
    from jaxnotes.guard import PopulationDivergedError

    rates = [r["learning_rate"] for r in rows]
    return PopulationDivergedError(
        f"every {what} diverged (its loss became NaN/inf or exploded): learning rates "
        f"{min(rates):g} to {max(rates):g}; try smaller rates, or check the data for NaN/inf"
    )


def _save_plot(draw, path) -> None:
    from jaxnotes import plots

    plots.close(draw(path))


def _common(config, population_summary: dict | None) -> dict:
    out = {"model": config.model, "dataset": config.dataset, "epochs": config.epochs}
    out["test_acc"] = None  # model selection never looks at the test split
    if population_summary is not None:
        for key in ("examples_per_sec", "wall_s", "members", "compiled_programs"):
            out[key] = population_summary.get(key)
    else:
        out.setdefault("examples_per_sec", None)
    return out


COLUMNS = ("fold", "trial", "learning_rate", "weight_decay", "momentum", "dropout", "width")
RESULTS = ("train_loss", "val_acc", "diverged")


def _table(rows: list[dict], log) -> None:
    """One line per member: its settings and results."""
    keys = [k for k in (*COLUMNS, *RESULTS) if k in rows[0]]
    log("  ".join(f"{k:>13}" for k in keys))
    for row in rows:
        cells = [
            f"{row[k]:>13.4g}" if isinstance(row[k], float) else f"{row[k]!s:>13}" for k in keys
        ]
        log("  ".join(cells))
