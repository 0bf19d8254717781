"""``ldsm serve``: run the design flow on a cron schedule (a Prefect deployment served here).

``ldsm serve --cron "0 3 * * *" [--name nightly] [--config RUN/config.json | DESIGN OPTIONS]``
registers the deployment ``design/<name>`` with the Prefect API that ``PREFECT_API_URL`` names
(or the running server that ``flows.api_server.choose_api`` finds, e.g. ``ldsm server start``'s)
and keeps running, starting each scheduled (or manually triggered) run in a subprocess of this
process; Ctrl-C stops serving and pauses the schedule. The design parameters come from
``--config`` (a ``DesignConfig`` as JSON, e.g. the ``config.json`` a design run writes) or from
the options of ``ldsm design``, which ``ldsm serve`` takes too. The cron times are in ``--timezone`` (UTC).

``--entrypoint`` serves another ``ldsm`` flow the same way (``flows.screen:screen_flow`` with a
``ScreenConfig`` JSON screens a folder every night); every ``ldsm`` flow takes one ``config``.

For a deployment that runs on a work pool instead (a worker per machine), see ``prefect.yaml``
at the repository root and the README.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from flows.api_server import configured_api_url
from flows.cli import api_in_process
from flows.cli_sample import DESIGN_ENTRYPOINT
from flows.console import UsageError


def load_flow(entrypoint: str = DESIGN_ENTRYPOINT):
    """The flow at ``module:attribute`` (imported, so it runs the code of this checkout)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def resolve_annotations(flow):
    """Replace the flow function's string annotations by the types they name; returns ``flow``.

    ``flow.serve`` hands the flow to each run's subprocess with cloudpickle, which pickles the
    function by value with only the globals its code uses. A module with
    ``from __future__ import annotations`` leaves ``config: "DesignConfig"`` as a string whose
    class is then missing in the subprocess, and Prefect fails the run with "... is not fully
    defined" while validating the parameters. Resolved annotations travel with the function.
    """
    flow.fn.__annotations__ = typing.get_type_hints(flow.fn)
    return flow


def serve(
    flow,
    *,
    name: str,
    cron: str,
    parameters: dict,
    timezone: str = "UTC",
    limit: int | None = None,
    pause_on_shutdown: bool = True,
) -> None:
    """Serve ``flow`` as deployment ``<flow name>/<name>`` on ``cron``; blocks until stopped."""
    from prefect.schedules import Cron

    resolve_annotations(flow)
    flow.serve(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters=parameters,
        limit=limit,
        pause_on_shutdown=pause_on_shutdown,
        description=f"ldsm serve: {flow.name} on '{cron}'",
        tags=["ldsm"],
    )


def parameters_from_args(args: argparse.Namespace) -> dict:
    """``{"config": {...}}`` from ``--config`` (which wins) or from the design options."""
    if args.config:
        return {"config": json.loads(Path(args.config).read_text())}
    if args.entrypoint != DESIGN_ENTRYPOINT:
        return {}  # the flow's own defaults
    from flows import design

    return {"config": design.config_from_args(args).model_dump(mode="json")}


def run(args) -> int:
    """``ldsm serve``: checks the API and the options, then serves until stopped."""
    if not (configured_api_url() or api_in_process()):
        raise UsageError(
            "serving needs a Prefect server that outlives this command: start one with "
            "`ldsm server start` (or set PREFECT_API_URL to a running one)"
        )
    try:
        parameters = parameters_from_args(args)
        flow = load_flow(args.entrypoint)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    serve(
        flow,
        name=args.name,
        cron=args.cron,
        parameters=parameters,
        timezone=args.timezone,
        limit=args.concurrency,
        pause_on_shutdown=not args.keep_schedule,
    )
    return 0
