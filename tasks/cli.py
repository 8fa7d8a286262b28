"""The ``flywheel`` command line: every stage of the cycle, runnable without Airflow.

    flywheel simulate --days 3            # write agent logs to the landing folder
    flywheel build-base                   # build and pre-train the offline base models (cached)
    flywheel ingest / validate / curate   # the data stages
    flywheel attribute / review           # judge the bad ratings; SME review (export/import)
    flywheel finetune / evaluate / gate    # the model stages
    flywheel register / report --cycle-id C  # a finished cycle's winner; its report, rendered
    flywheel cycle --workload-id desk     # one cycle of your workload on the embedded stack
    flywheel demo                         # traffic, then cycles through Airflow, agent in the loop
    flywheel registry --action show        # aliases; --action promote / rollback
    flywheel agent --query "..."           # route with the champion, log to the landing folder
    flywheel serve airflow|mlflow         # the UIs on the embedded state (127.0.0.1)

``flywheel <stage> --help`` lists a stage's settings; each stage also takes ``--config FILE.yaml``.
A mistake in what a command was given (a missing batch, a broken workload file, too few examples)
is one line on stderr and exit status 1; ``flywheel --debug <stage> ...`` (or
``FLYWHEEL_DEBUG=1``) shows the traceback as well.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from tasks.core.errors import UserError

#: sub-command -> module whose ``main(argv)`` runs it (``module:function`` names another function)
COMMANDS: dict[str, str] = {
    "simulate": "tasks.demo.simulate",
    "build-base": "tasks.demo.basemodels",
    "ingest": "tasks.ingest.landing",
    "validate": "tasks.ingest.validate",
    "attribute": "tasks.curation.judge",
    "review": "tasks.curation.review",
    "curate": "tasks.curation.curate",
    "finetune": "tasks.training.finetune",
    "evaluate": "tasks.evaluation.evaluate",
    "gate": "tasks.evaluation.gate",
    "register": "tasks.registry.register:register_main",
    "report": "tasks.reporting.report",
    "cycle": "tasks.stack.cycle",
    "demo": "tasks.demo.run",
    "serve": "tasks.stack.serve",
    "registry": "tasks.registry.register",
    "agent": "tasks.serving.agent",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("FLYWHEEL_DEBUG", "").lower() in {"1", "true", "yes"}
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"flywheel: unknown command {command!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[command].partition(":")
    module = importlib.import_module(module_name)
    try:
        return int(getattr(module, function or "main")(rest) or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        first, *more = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"flywheel {command}: error: {first}", *more, sep="\n", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
