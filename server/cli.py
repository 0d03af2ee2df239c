"""The `nearcat` command: serve, import reference images, classify, list categories.

A thin argparse layer: `serve` wires settings into `server.app`; the other commands are
registered by their modules under `server/commands/` (the client commands talk gRPC to a
running server, see `server.commands.client`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from server.commands import CommandError, calibrate, catalogue, classify, operate

if TYPE_CHECKING:
    from server.settings import Settings

# The client commands, each registered by its own module, in the order `nearcat --help`
# lists them.
CLIENT_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    catalogue.register_import,
    classify.register_classify,
    catalogue.register_categories,
    catalogue.register_show_category,
    catalogue.register_add_references,
    catalogue.register_remove_references,
    catalogue.register_delete_category,
    calibrate.register_calibrate,
    catalogue.register_add_category,
    catalogue.register_update_category,
    classify.register_zero_shot,
    classify.register_search,
    operate.register_status,
    operate.register_reindex,
    operate.register_rollback,
]

# Modules under server/commands/ that add their own subcommands (train, eval, export, ...).
COMMAND_MODULES: list[str] = [
    "server.commands.evaluate",
    "server.commands.train",
    "server.commands.bench",
    "server.commands.export",
]

EPILOG = """\
examples:
  nearcat serve                                  # embedded store under ./var, port 50051
  nearcat import photos/                         # photos/<category>/*.jpg, nested = parents
  nearcat import data/images.csv --path-template 'images/{}.jpg'
  nearcat classify shoe.jpg shirt.png --json
  nearcat categories
  nearcat add-references Shoes new1.jpg new2.jpg # more examples for a category
  nearcat show-category Shoes                    # its reference images, with their ids
  nearcat remove-references 5d41402abc4b2a76     # a wrong example out again
  nearcat delete-category "Straw hats" --yes
  nearcat calibrate --labelled checked/          # photos a person labelled: the honest evidence
  nearcat calibrate                              # refit on what is stored (import does it)
  nearcat add-category "Straw hats" --prompt "a photo of a straw hat"   # classifiable at once
  nearcat zero-shot photo.jpg --label sneakers --label boots
  nearcat search "red sneakers"
  nearcat reindex --model /srv/models/v2         # re-embed, validate, switch; Classify answers
  nearcat rollback                               # back to the previous model version
"""


# -- serve ---------------------------------------------------------------------------------


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, so flags, env vars and docs never drift apart."""
    from server.settings import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        switch = field.annotation is bool  # a value, not a bare switch: env vars read alike
        default = str(field.default).lower() if switch else field.default
        shown = "" if field.default is None else f"default: {default}; "
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            metavar="true|false" if switch else None,
            help=f"{field.description} ({shown}env NEARCAT_{name.upper()})",
        )


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags given on the command line win over NEARCAT_* variables, which win over defaults."""
    from pydantic import ValidationError

    from server.settings import Settings

    overrides = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            _setting_name(str(e["loc"][0])) + f": {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise CommandError(f"invalid setting: {problems}") from None


def _setting_name(field: str) -> str:
    """A setting as a person may have given it: the flag, or its environment variable."""
    return f"--{field.replace('_', '-')} (or NEARCAT_{field.upper()})"


def cmd_serve(args: argparse.Namespace) -> None:
    from embedder import ArtifactError
    from indexer.store import BlobStoreMismatch
    from server.app import PortInUse, StoreUnreachable, serve
    from server.auth import TokenError
    from server.logging_setup import configure_logging
    from server.tls import TlsError

    settings = load_settings(args)
    configure_logging(settings.log_format, args.verbose)
    try:
        serve(settings, announce=lambda line: print(line, flush=True))
    except ArtifactError as exc:  # e.g. a model file that fails its checksum
        raise CommandError(f"cannot serve the model: {exc}") from exc
    except (TokenError, TlsError, PortInUse, StoreUnreachable, BlobStoreMismatch) as exc:
        raise CommandError(str(exc)) from exc


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nearcat",
        description="Classify product photos by their nearest reference images. "
        "Add a category by adding example images: no retraining.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Every flag can also be set as NEARCAT_<NAME>.",
    )
    add_settings_flags(serve)
    serve.set_defaults(run=cmd_serve)

    for register in CLIENT_COMMANDS:
        register(commands)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import grpc

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it picked
    try:
        args.run(args)
    except CommandError as exc:
        print(f"nearcat: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except grpc.RpcError as exc:
        from server.message_limit import advice

        said = advice(exc.details()) if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
        if said is not None:
            print(f"nearcat: {said}", file=sys.stderr)
        else:
            answer = f"{exc.code().name}: {exc.details()}"
            print(f"nearcat: the server answered {answer}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, ImportError) as exc:
        # A stop signal while a compiled module initialises (onnxruntime, loading the model)
        # surfaces as that module's "initialization failed", caused by the interrupt.
        if not _caused_by_interrupt(exc):
            raise
        print("nearcat: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader went away (`nearcat show-category X | head`): not an error to report.
        # Point stdout at /dev/null so flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports it


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `exc`."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


if __name__ == "__main__":
    main()
