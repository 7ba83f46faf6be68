"""``colpo-gateway``: run the service, check photos offline, simulate devices, validate a config."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gateway import __version__, allocator
from gateway.config import ConfigError, GatewayConfig, defaults_yaml, load_config
from gateway.config_files import check_files, service_user
from gateway.instance import AlreadyRunning, hold_state_folder
from gateway.logs import configure_logging
from gateway.systemd import notify

if TYPE_CHECKING:
    from gateway.simulate import DeviceAccess

EXIT_CONFIG = 2
"""A config error (or a bad command line): the unit's RestartPreventExitStatus=, so systemd does not retry it."""

EXIT_ALREADY_RUNNING = 10
"""Another gateway holds the state folder; the unit's RestartPreventExitStatus= lists it, so systemd does not retry."""


def _config(args: argparse.Namespace) -> GatewayConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "broker", None):
        overrides["broker"] = {"url": args.broker}
    config = load_config(args.config, overrides)
    configure_logging(config.logging)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.judge import build_judge
    from gateway.service import GatewayService

    config = _config(args)
    files = check_files(config, args.config, service_user())
    if files.errors:
        raise ConfigError(files.errors)
    for warning in files.warnings:
        structlog.get_logger("gateway").warning("config_warning", problem=warning)
    try:
        held = hold_state_folder(config.store.resolved_path().parent)
    except AlreadyRunning as exc:
        structlog.get_logger("gateway").error("already_running", state_folder=str(exc.folder), why=str(exc))
        return EXIT_ALREADY_RUNNING
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    notify("STATUS=loading the backend")
    structlog.get_logger("gateway").info("starting", allocator=allocator.active())
    judge = build_judge(config)
    service = GatewayService(config, judge)
    service.start()  # READY=1, STATUS= and WATCHDOG=1 from here on: gateway.systemd.Notifier
    stop.wait()
    structlog.get_logger("gateway").info("stopping", signal="received")
    service.stop()  # closes the slot too: cancels a background engine build, closes the runtimes
    if held is not None:
        os.close(held)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import cv2

    from gateway.annotate import annotate
    from gateway.check import annotation_names, expand, judge_files
    from gateway.judge import build_judge

    config = _config(args)
    judge = build_judge(config)
    files = expand(args.files)
    if args.annotate:
        args.annotate.mkdir(parents=True, exist_ok=True)
    failed = 0
    if not args.json:
        print(f"{'file':40} {'verdict':10} {'sharp p':>8} {'cervix':>7} {'ms':>7}  reasons")
    judged_files = judge_files(judge, files, config.processing.worker_count())
    for (path, judged), name in zip(judged_files, annotation_names(files), strict=True):
        if isinstance(judged, OSError):
            print(f"{path}: cannot read: {judged.strerror}", file=sys.stderr)
            failed += 1
            continue
        v = judged.verdict
        if args.json:
            print(v.model_dump_json(by_alias=True), flush=True)
        else:
            p = f"{v.focus.sharp_probability:.2f}" if v.focus else "-"
            found = ("yes" if v.cervix.found else "no") if v.cervix else "-"
            reasons = ", ".join(str(r) for r in v.reasons) + (f" ({v.detail})" if v.detail else "")
            print(f"{path.name[:40]:40} {v.verdict!s:10} {p:>8} {found:>7} {v.timings_ms['total']:7.1f}  {reasons}")
        if args.annotate and judged.image is not None:
            cv2.imwrite(str(args.annotate / name), annotate(judged.image, v))
    judge.pipeline.slot.close()  # a one-off check does not leave an engine build running
    return 1 if failed else 0


def _device_access(args: argparse.Namespace) -> tuple[DeviceAccess, str | None]:
    """``simulate``'s broker account or certificate, and the one device it names (``<site>/<device>``)."""
    from gateway.simulate import DeviceAccess

    password = args.password
    if args.password_file is not None:
        password = args.password_file.read_text().strip()
    access = DeviceAccess(args.username, password, args.ca_file, args.cert_file, args.key_file)
    identity = args.username or args.identity
    if identity is None:
        return access, None
    site, _, device = identity.partition("/")
    if not device or args.devices != 1:
        raise SystemExit(
            "simulate: an account or certificate is one device: --devices 1, and the identity <site>/<device>"
        )
    args.site = site
    return access, device


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.simulate import BrokerUnreachable, Result, folder_photos, generated_photos, run_devices, summarize

    access, device_name = _device_access(args)
    photos = folder_photos(args.folder) if args.folder else generated_photos(*args.size)
    if not photos:
        print(f"no .jpg/.jpeg/.png photos in {args.folder}", file=sys.stderr)
        return 1

    def show(result: Result) -> None:
        v = result.verdict
        if v is None:
            print(f"{result.device}  {result.photo.name:44} NO VERDICT within the timeout", flush=True)
            return
        p = f"{v.focus.sharp_probability:.2f}" if v.focus else "  - "
        reasons = ",".join(str(r) for r in v.reasons) or "-"
        print(
            f"{result.device}  {result.photo.name:44} {v.verdict!s:9} p={p} {result.latency_ms:7.1f} ms  {reasons}",
            flush=True,
        )

    started = time.monotonic()
    per_device = args.count or len(photos)
    try:
        results = run_devices(
            args.broker,
            photos,
            devices=args.devices,
            per_device=per_device,
            rate_hz=args.rate,
            site=args.site,
            prefix=args.prefix,
            timeout_s=args.timeout,
            on_result=None if args.quiet else show,
            run_id=args.run_id,
            access=access,
            device_name=device_name,
        )
    except BrokerUnreachable as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    interrupted = len(results) < args.devices * per_device
    print(("interrupted\n" if interrupted else "") + summarize(results, time.monotonic() - started))
    return 130 if interrupted else 0 if all(r.verdict is not None for r in results) else 1


def _models_config(args: argparse.Namespace) -> GatewayConfig:
    """The config with the engine commands' options as overrides of its ``models:`` section."""
    options = {
        "manifest": args.manifest,
        "engine_cache_dir": args.cache_dir,
        "precision": getattr(args, "precision", None),
        "calibration_dir": args.calibration,
        "max_batch": getattr(args, "max_batch", None),
        "workspace_mb": getattr(args, "workspace_mb", None),
        "gpu": getattr(args, "gpu", None),
    }
    overrides: dict[str, Any] = {"models": {k: str(v) for k, v in options.items() if v is not None}}
    config = load_config(args.config, overrides)
    configure_logging(config.logging)
    return config


def cmd_engines_build(args: argparse.Namespace) -> int:
    from gateway.engines.command import build

    return build(_models_config(args), args.model, args.force)


def cmd_engines_quantize(args: argparse.Namespace) -> int:
    from gateway.engines.command import quantize

    return quantize(_models_config(args), args.model, args.force)


def cmd_train(args: argparse.Namespace) -> int:
    configure_logging(load_config(None).logging)
    try:
        from gateway.training.train import TrainOptions, run
    except ImportError as exc:
        print(f"training needs the train extra ({exc}): pip install 'colposcopy-gateway[train]'", file=sys.stderr)
        return 1
    options = TrainOptions(
        data=args.data, out=args.out, seed=args.seed, keep_detector=args.keep_detector, focus_cache=args.focus_cache
    )
    return run(options)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from gateway.evaluation.seed_spread import SeedSpread
    from gateway.progress import BuildProgress
    from gateway.training.evaluate import Report, evaluate, roc_png

    config = load_config(args.config)
    configure_logging(config.logging)
    manifest = args.manifest or config.models.manifest_path()
    sources = [s for s in args.independent_blur.split(",") if s and s != "none"]

    def run(seed: int, path: Path) -> Report:
        progress = BuildProgress(f"evaluate seed {seed}", interval_s=15.0)
        report = evaluate(
            args.data,
            path,
            seed=seed,
            progress=progress,
            all_patients=args.all,
            config=config,
            holdout_sources=sources,
            draws=args.draws,
        )
        progress.close()
        return report

    report = run(args.seed, manifest)
    print(report.table(), flush=True)
    out = report.to_json()
    if args.seed_manifests:
        others = {seed: run(seed, path) for seed, path in args.seed_manifests.items()}
        spread = SeedSpread({args.seed: report} | others)
        print("\n" + spread.table())
        out["seed_reports"] = {str(seed): r.to_json() for seed, r in others.items()}
        out["seed_spread"] = spread.to_json()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.roc:
        roc_png(report, args.roc)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import invalid_config, run_doctor

    try:
        config = _config(args)
    except ConfigError as exc:
        return invalid_config(args.config, exc.problems)
    return run_doctor(config, source=args.config)


def cmd_config_validate(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    files = check_files(config, args.file, service_user())
    if files.errors:
        raise ConfigError(files.errors)
    for warning in files.warnings:
        print(f"warning: {warning}")
    print(f"{args.file}: valid (gateway_id={config.gateway_id}, broker={config.broker.url})")
    return 0


def cmd_config_defaults(_args: argparse.Namespace) -> int:
    print(HEADER + defaults_yaml())
    return 0


HEADER = """\
# colposcopy-gateway configuration: every key with its default (`colpo-gateway config defaults` prints this).
# Check a file with `colpo-gateway config validate FILE`; unknown keys are errors. Secrets never go here.
"""


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def _draws(text: str) -> int:
    value = int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"at least 8 draws per photo, got {value}")
    return value


def _seed_manifests(text: str) -> dict[int, Path]:
    """``SEED=MANIFEST,...``: each seed an int, once; each manifest an existing, valid manifest file."""
    from gateway.models.manifest import ManifestError, load_manifest

    out: dict[int, Path] = {}
    for item in (part.strip() for part in text.split(",")):
        seed_text, sep, path_text = item.partition("=")
        try:
            seed = int(seed_text)
        except ValueError:
            seed = None
        if not sep or seed is None or not path_text:
            raise argparse.ArgumentTypeError(f"{item!r} is not SEED=MANIFEST (SEED an integer)")
        if seed in out:
            raise argparse.ArgumentTypeError(f"seed {seed} is given twice")
        path = Path(path_text)
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"seed {seed}: {path} is not an existing manifest file")
        try:
            load_manifest(path)
        except ManifestError as exc:
            problems = "; ".join(exc.problems)
            raise argparse.ArgumentTypeError(f"seed {seed}: {path} is not a valid manifest: {problems}") from None
        out[seed] = path
    return out


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What the parser cannot check option by option."""
    if args.command == "evaluate" and args.seed_manifests and args.seed in args.seed_manifests:
        return f"argument --seed-manifests: seed {args.seed} is the main --seed; give only the other seeds"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colpo-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"colposcopy-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway service")
    run.add_argument("--config", type=Path, help="YAML config (defaults apply when omitted)")
    run.add_argument("--broker", help="mqtt://host:port or mqtts://host:port; overrides the config")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="judge photo files offline with the same pipeline")
    check.add_argument("files", nargs="+", type=Path, help="image files, or folders of them")
    check.add_argument("--config", type=Path)
    check.add_argument("--json", action="store_true", help="one verdict JSON object per file, in input order")
    check.add_argument("--annotate", type=Path, metavar="DIR", help="write each photo with its verdict drawn on it")
    check.set_defaults(func=cmd_check)

    sim = sub.add_parser("simulate", help="simulated devices send photos and time the verdicts")
    sim.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    sim.add_argument("--devices", type=int, default=2)
    sim.add_argument("--count", type=int, default=0, help="photos per device (default: as many as there are)")
    sim.add_argument("--rate", type=float, default=1.0, help="photos per second per device (0: back to back)")
    sim.add_argument("--folder", type=Path, help="photos to send (default: generated colposcope-like scenes)")
    sim.add_argument("--size", type=_size, default=(1600, 1200), metavar="WxH", help="generated scene size")
    sim.add_argument("--site", default="demo")
    sim.add_argument("--prefix", default="colposcopy")
    sim.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each verdict")
    sim.add_argument("--quiet", action="store_true", help="only the summary")
    sim.add_argument("--username", help="the device account <site>/<device> (one device: --devices 1)")
    sim.add_argument("--password", help="its password (visible to other users in ps: prefer --password-file)")
    sim.add_argument("--password-file", type=Path, help="a file holding the password")
    sim.add_argument("--ca-file", type=Path, help="CA that signed the broker's certificate (mqtts://)")
    sim.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS, port 8884)")
    sim.add_argument("--key-file", type=Path, help="its key (unless the certificate file holds it)")
    sim.add_argument(
        "--identity", metavar="SITE/DEVICE", help="the certificate's CN, with --cert-file (one device: --devices 1)"
    )
    sim.add_argument(
        "--run-id",
        help="image ids are <run-id>-<device>-<n> (default: fresh each run); the same run id again is answered"
        " from the gateway's verdict store",
    )
    sim.set_defaults(func=cmd_simulate)

    engines = sub.add_parser("engines", help="TensorRT engines: build plans, quantize for INT8")
    engines_sub = engines.add_subparsers(dest="engines_command", required=True)
    for name, func, text in (
        ("build", cmd_engines_build, "build TensorRT plans from the manifest's ONNX files for this GPU"),
        ("quantize", cmd_engines_quantize, "make INT8 (QDQ) ONNX files with ONNX Runtime from calibration photos"),
    ):
        command = engines_sub.add_parser(name, help=text)
        command.add_argument("--config", type=Path, help="YAML config (its models: section; defaults apply)")
        command.add_argument("--manifest", type=Path, help="model manifest (overrides models.manifest)")
        command.add_argument("--cache-dir", type=Path, help="engine cache (overrides models.engine_cache_dir)")
        command.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
        command.add_argument("--calibration", type=Path, metavar="DIR", help="photos for INT8 calibration")
        command.add_argument("--force", action="store_true", help="rebuild even when up to date")
        command.set_defaults(func=func)
        if name == "build":
            command.add_argument("--precision", choices=["fp16", "fp32", "int8"], help="default: models.precision")
            command.add_argument("--max-batch", type=int, help="largest batch of the optimization profile")
            command.add_argument("--workspace-mb", type=int, help="builder workspace limit")
            command.add_argument("--gpu", type=int, help="CUDA device index")

    train = sub.add_parser("train", help="train the cervix detector and focus classifier (needs the train extra)")
    train.add_argument("--data", type=Path, required=True, help="photos with labels.csv (e.g. cervix-dev)")
    train.add_argument("--out", type=Path, default=Path("engines"), help="where the ONNX files and manifest go")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--keep-detector",
        type=Path,
        metavar="MANIFEST",
        help="reuse this manifest's cervix detector (ONNX file and entry) and train the focus classifier only",
    )
    train.add_argument(
        "--focus-cache",
        type=Path,
        metavar="NPZ",
        help="keep the focus samples' features here and reuse them when seed and sample options match",
    )
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="accuracy of the manifest's models on labelled photos, with a baseline")
    ev.add_argument("--data", type=Path, required=True, help="photos with labels.csv")
    ev.add_argument("--config", type=Path, help="YAML config (its models.manifest)")
    ev.add_argument("--manifest", type=Path, help="model manifest (overrides models.manifest)")
    ev.add_argument("--seed", type=int, default=0, help="the training seed: it gives the patient split")
    ev.add_argument("--all", action="store_true", help="every photo (a folder never trained on), not the split")
    ev.add_argument(
        "--independent-blur",
        default="atlas,device-like",
        metavar="SOURCES",
        help="sources for the independent blur generator's rows: atlas, device-like, both (default) or none",
    )
    ev.add_argument("--draws", type=_draws, default=10, help="independent blur draws per photo (>= 8)")
    ev.add_argument(
        "--seed-manifests",
        type=_seed_manifests,
        metavar="SEED=MANIFEST,...",
        help="the models of other training seeds (not --seed), each evaluated on its own patient split with the same"
        " options; then a seed spread of the headline figures and the per-seed targets",
    )
    ev.add_argument("--json", type=Path, metavar="FILE", help="write the full report (and per-seed reports) as JSON")
    ev.add_argument("--roc", type=Path, metavar="PNG", help="draw the ROC curves")
    ev.set_defaults(func=cmd_evaluate)

    doctor = sub.add_parser("doctor", help="which backends can run here, cached engines, broker reachability")
    doctor.add_argument("--config", type=Path)
    doctor.add_argument("--broker", help="mqtt://host:port or mqtts://host:port; overrides the config")
    doctor.set_defaults(func=cmd_doctor)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    validate = config_sub.add_parser("validate", help="report every problem in a config file")
    validate.add_argument("file", type=Path)
    validate.set_defaults(func=cmd_config_validate)
    defaults = config_sub.add_parser("defaults", help="print the default configuration as commented YAML")
    defaults.set_defaults(func=cmd_config_defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (problem := _argument_problem(args)) is not None:
        parser.error(problem)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print("configuration error:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C in a command other than run (which stops cleanly on SIGINT itself)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
