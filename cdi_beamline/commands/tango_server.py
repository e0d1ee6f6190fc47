"""``cdi-beamline tango-server``: serve ``sim/cdi/detector`` (CDIReplayDetector) and
``sim/cdi/reconstructor`` (CDIReconstructor) in one Tango device server."""

from __future__ import annotations

import argparse

from ..config import LIVE_ITERATIONS, ModelConfig, ReconstructorConfig
from ..devices import DEFAULT_SOURCE
from ..errors import CDIValueError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tango-server",
        help="run the Tango replay detector and reconstruction devices",
        description="Serve the Tango devices sim/cdi/detector (CDIReplayDetector) and "
        "sim/cdi/reconstructor (CDIReconstructor) in one device server CDIServer/INSTANCE. "
        "With --nodb no Tango database is needed: clients use "
        "tango://HOST:PORT/sim/cdi/reconstructor#dbase=no. Without it the devices must be "
        "registered in the database of $TANGO_HOST (--register does it). See docs/tango.md.",
    )
    p.add_argument("--instance", default="cdi", metavar="NAME", help="server instance name (default cdi)")
    p.add_argument("--nodb", action="store_true", help="run without a Tango database (needs --port)")
    p.add_argument("--port", type=int, metavar="P", help="TCP port to listen on (with --nodb)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="H",
        help="address to listen on with --nodb (default 127.0.0.1; the host name or IP for remote clients)",
    )
    p.add_argument(
        "--register",
        action="store_true",
        help="register CDIServer/INSTANCE and both devices (with the properties below) in "
        "the Tango database of $TANGO_HOST before serving",
    )
    p.add_argument(
        "--source",
        metavar="SPEC",
        help=f"detector property Source: aps34idc | aps34idc-raw | synthetic | a file path (default {DEFAULT_SOURCE})",
    )
    p.add_argument("--device", metavar="D", help="reconstructor property TorchDevice: auto | cpu | cuda[:n]")
    p.add_argument(
        "--iterations", type=int, metavar="N", help=f"reconstructor property Iterations (default {LIVE_ITERATIONS})"
    )
    p.add_argument(
        "--init",
        choices=("cnn", "random"),
        help=f"reconstructor property InitMode (default {ReconstructorConfig.model_fields['init'].default})",
    )
    p.add_argument(
        "--pattern-shape",
        type=int,
        nargs=2,
        metavar=("ROWS", "COLS"),
        help="reconstructor property PatternShape (default {0} {0}, the CNN's input)".format(ModelConfig().input_size),
    )
    p.add_argument("--tango-verbose", type=int, default=0, metavar="LEVEL", help="Tango trace level 0-5")
    p.set_defaults(func=run)


def _properties(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    from ..devices.tango import DETECTOR_NAME, RECONSTRUCTOR_NAME

    detector = {"Source": args.source}
    reconstructor = {
        "TorchDevice": args.device,
        "Iterations": args.iterations,
        "InitMode": args.init,
        "PatternShape": args.pattern_shape,
    }
    props = {
        DETECTOR_NAME: {k: v for k, v in detector.items() if v is not None},
        RECONSTRUCTOR_NAME: {k: v for k, v in reconstructor.items() if v is not None},
    }
    return {dev: p for dev, p in props.items() if p}


def run(args: argparse.Namespace) -> int:
    from .. import resources
    from ..devices.tango import register, run_server

    properties = _properties(args)
    if args.nodb and args.register:
        raise CDIValueError("--register needs a Tango database; it cannot be combined with --nodb")
    if not args.nodb and properties and not args.register:
        raise CDIValueError(
            "device properties on the command line need --nodb or --register; otherwise set them in the Tango database"
        )
    if args.register:
        register(args.instance, properties)
    resources.apply(resources.plan())
    run_server(
        args.instance,
        nodb=args.nodb,
        host=args.host,
        port=args.port,
        properties=properties if args.nodb else None,
        verbose=args.tango_verbose,
    )
    return 0
