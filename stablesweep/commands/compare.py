"""`stablesweep compare`: sweeps (and ramps) side by side, read back from MLflow."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

from stablesweep.commands.args import DEFAULT_STORE, resolve_uri
from stablesweep.vocab import OBJECTIVE, VERDICTS, InputError

EPILOG = """\
examples:
  # every sweep and ramp in the default store (runs/mlflow.db, what `stablesweep sweep` and `ramp` write)
  stablesweep compare

  # two sweeps of a server, only their stable configurations, the ten safest (most lr headroom)
  stablesweep compare food-qmc food-qmc-slice --mlflow http://127.0.0.1:5000 --only stable --by margin --top 10

  # a markdown report for a pull request; a CSV for pandas; an HTML page with the figures
  stablesweep compare a b --mlflow sqlite:///runs/mlflow.db --format md > compare.md
  stablesweep compare a b --format csv > configs.csv
  stablesweep compare a b --format html --out runs/compare/a-vs-b   # open runs/compare/a-vs-b/report.html

What it reads: the parent run of each sweep (tag stablesweep.kind = sweep, or ramp) and its trials
(child runs: tags.mlflow.parentRunId = the parent's run id), with their verdict tags and objective
metric; nothing from local files. SWEEP is a sweep's name (its run name) or a run id; none: all of
the experiment, oldest first.

What it reports:
  - per sweep: verdict counts, the step budget, the best objective, LR sensitivity;
  - per sweep and setting (a combination of the categorical axes, lr excluded): verdict counts
    (replicates and range tests left out), the largest stable, smallest diverged, smallest failed,
    largest safe and recommended lr as the parent run records them (the numbers of its
    stable_region.json or ramp.json; for an older parent that records none, recomputed from its
    child runs, and the column "answer from" says so), LR sensitivity;
  - the configurations ranked (stable first) by objective, or by lr margin: lr over the smallest
    diverged lr of its setting in its sweep (0.1: ten times below the boundary; blank: nothing
    diverged there). Values that differ from the first row are marked (`*`, bold in md, highlighted
    in html); a column marked `*` differs among the rows shown;
  - between each sweep and the next: the settings that became stable or unstable (with a note when
    only the lr range changed), and the base-config keys that differ;
  - answers by config: where a sweep and a ramp (or several of either) ran one config file, each
    setting's answer side by side, a column group a run: budget, max stable, min failed, largest
    safe and recommended lr, and the lr at 5% risk where measured, as each run's parent holds them
    (the numbers of its stable_region.json or ramp.json). Where, at one budget, one run recommends
    an lr above another's smallest failed lr, finds stable an lr the other saw fail, or calls safe
    an lr above the other's failure, it says so; runs at different budgets are said to answer for
    different budgets.
Files in --out: report.txt/.md/.html, configs.csv, settings.csv, changes.csv, answers.csv, compare.json,
figures/parallel.png (stable vs diverged trials, parallel coordinates) and figures/region_SWEEP.png.
The report is logged back to MLflow as a run with the tag stablesweep.kind = compare (--no-log: not).

Links: the report links every run name and sweep run id to its page in the MLflow UI (--ui; by
default the --mlflow server, or http://127.0.0.1:5000 where `mlflow ui --backend-store-uri
sqlite:///...` listens), and the command prints a link to the stable trials, best objective first,
in the UI's runs table (docs/mlflow.md says what the columns are). The UI's search box takes:
  tags.verdict = 'stable'                                 stable trials of every sweep
  tags.`mlflow.parentRunId` = '<parent run id>'           the trials of one sweep
  tags.`stablesweep.sweep` = 'food-qmc' and tags.verdict = 'diverged'
  tags.`stablesweep.kind` = 'sweep'                       the sweeps (their region files are artifacts)
  tags.`stablesweep.kind` = 'compare'                     the reports of this command
Exit status: 0 done, 2 bad input (no store there, unreachable server, unknown sweep or experiment).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare sweeps side by side, read back from MLflow: stable configs, "
                                       "lr margins, settings that changed verdict",
                       description="Compare stability sweeps (and ramps) as MLflow holds them: the stable "
                                   "configurations side by side with the parameters that differ highlighted, "
                                   "objective, lr margin to the boundary, LR sensitivity and verdict counts per "
                                   "sweep; with two or more sweeps, the settings that became stable or unstable.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="*", metavar="SWEEP",
                   help="sweep (or ramp) names or run ids; default: all in the experiment")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help=f"MLflow tracking URI: sqlite:///PATH/mlflow.db or a server http://127.0.0.1:5000 "
                        f"(default: sqlite:///{DEFAULT_STORE}, the default of `stablesweep sweep` and `ramp`, if it exists)")
    p.add_argument("--experiment", default=None, metavar="NAME", help="MLflow experiment (default stablesweep)")
    p.add_argument("--only", default=None, choices=list(VERDICTS),
                   help="list only trials with this verdict (e.g. --only stable)")
    p.add_argument("--top", type=int, default=None, metavar="K", help="list the first K configurations only")
    p.add_argument("--by", default=OBJECTIVE, choices=[OBJECTIVE, "margin"],
                   help="rank by objective (default; lower first) or by lr margin (most headroom first)")
    p.add_argument("--format", default="table", choices=["table", "md", "csv", "html"],
                   help="what goes to stdout (default table); every format is written to --out anyway")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the report files and figures go (default runs/compare/compare-TIMESTAMP)")
    p.add_argument("--no-log", dest="log", action="store_false",
                   help="do not log the report to MLflow as a `compare` run")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the figures")
    p.add_argument("--ui", default=None, metavar="URL",
                   help="the MLflow UI that run links point to (default: the --mlflow server, else "
                        "http://127.0.0.1:5000, where `mlflow ui` listens)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for an MLflow server to answer (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stablesweep.analysis.comparison import compare
    from stablesweep.analysis.reading import read_sweeps
    from stablesweep.analysis.render import render
    from stablesweep.analysis.report import figure_sources, log_report, write_report
    from stablesweep.tracking import (
        DEFAULT_EXPERIMENT,
        Tracker,
        TrackingError,
        run_link,
        stable_filter,
        ui_base,
        ui_command,
        ui_link,
    )

    if args.top is not None and args.top < 1:
        raise InputError(f"--top {args.top}: expected 1 or more")
    if args.ui is not None and not args.ui.startswith(("http://", "https://")):
        raise InputError(f"--ui {args.ui}: expected the address of an MLflow UI, http://HOST:PORT")
    uri = resolve_uri(args.mlflow)
    # a server that goes away mid-read fails in seconds, not after MLflow's default minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # stdout is the report in md/csv/html: everything else goes to stderr
    info = sys.stdout if args.format == "table" else sys.stderr
    notes: list[str] = []
    sweeps = read_sweeps(uri, args.experiment, args.sweeps, timeout=args.timeout, notes=notes)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    experiment = args.experiment or DEFAULT_EXPERIMENT
    ui = ui_base(args.ui or uri)
    cmp = compare(sweeps, only=args.only, top=args.top, by=args.by, source=f"{uri} (experiment {experiment})", ui=ui)
    out = Path(args.out or f"runs/compare/compare-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    files = write_report(cmp, sweeps, out, figures=args.figures)
    figs = figure_sources(files, out)
    text = render(cmp, args.format, figs)
    sys.stdout.write(text)
    sys.stdout.flush()
    print(f"\nfiles in {out}: " + ", ".join(sorted({p.name for k, p in files.items() if not k.startswith('figure_')}))
          + (", figures/" if figs else ""), file=info)
    # one sweep: its stable trials; several: the stable trials of the experiment (MLflow's search has no OR)
    where = stable_filter(sweeps[0].run_id if len(sweeps) == 1 else None)
    view = None
    if args.log:
        run_id = log_report(cmp, files, out, uri, args.experiment)
        print(f"MLflow: logged as run {run_id} (tags.`stablesweep.kind` = 'compare') in {uri}: "
              f"{run_link(ui, sweeps[0].experiment_id, run_id)}", file=info)
        try:  # our columns too: a saved view of the UI (an experiment tag; --no-log writes nothing)
            view = Tracker(uri, experiment).save_view(where, params=cmp.param_keys)
        except TrackingError as e:
            print(f"note: no saved view of the runs table ({e}); the link shows MLflow's default columns", file=info)
    link = ui_link(ui, sweeps[0].experiment_id, where, view=view)
    if not uri.startswith(("http://", "https://")) and not args.ui:
        print(f"MLflow UI: {ui_command(uri)}", file=info)
    print(f"Stable trials, best objective first: {link}", file=info)
    return 0
