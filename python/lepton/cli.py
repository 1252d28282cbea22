"""The ``lepton`` command: manage a registry from the shell.

The registry comes from ``--registry``, else ``$LEPTON_HOME``, else ``~/.lepton``: a directory, or a
``postgresql://`` URL (its artifact directory as ``?blobs=/path`` or ``$LEPTON_BLOBS``).
"""
from __future__ import annotations

import json
import sys
from typing import List, Optional, Sequence, Tuple

import click

from . import __version__, _core
from .errors import InvalidArgument, LeptonError
from .registry import Registry, default_registry_path
from .registry import recover as recover_registry
from .text import format_history, table


def _pairs(values: Tuple[str, ...], what: str) -> List[Tuple[str, str]]:
    out = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out.append((key, value))
    return out


def _floats(values: Tuple[str, ...]) -> dict:
    out = {}
    for key, value in _pairs(values, "--metric"):
        try:
            out[key] = float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number", param_hint="--metric") from None
    return out


class _Group(click.Group):
    """Turns lepton errors into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LeptonError as e:
            click.echo(f"error: {type(e).__name__}: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="lepton")
@click.option(
    "--registry",
    "registry_path",
    envvar="LEPTON_HOME",
    default=default_registry_path,
    show_default="$LEPTON_HOME or ~/.lepton",
    help="Registry directory, or postgresql:// URL.",
)
@click.option("--actor", default=None, help="Name recorded in the audit log (default: login name).")
@click.pass_context
def cli(ctx: click.Context, registry_path: str, actor: Optional[str]) -> None:
    """lepton: run many versions of a model side by side."""
    ctx.obj = {"path": registry_path, "actor": actor}


def _registry(ctx: click.Context) -> Registry:
    return Registry(ctx.obj["path"], actor=ctx.obj["actor"])


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the registry directory (opening it does the same)."""
    reg = _registry(ctx)
    click.echo(f"registry ready at {reg.location}")


@cli.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--version", "label", help="Version label (default v<seq>).")
@click.option("--description", default="")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=NUMBER")
@click.option("--parent", help="Version this derives from: a label, @alias or model:label.")
@click.option("--alias", "aliases", multiple=True, help="Point this alias at the new version.")
@click.option("--reason", default="")
@click.pass_context
def register(ctx, name, file, label, description, tags, metrics, parent, aliases, reason) -> None:
    """Register a TorchScript FILE as a new version of model NAME."""
    reg = _registry(ctx)
    v = reg.register(
        name,
        file,
        version=label,
        description=description,
        tags=dict(_pairs(tags, "--tag")),
        metrics=_floats(metrics),
        parent=parent,
        reason=reason,
    )
    for alias in aliases:
        reg.set_alias(name, alias, v.version, reason=reason)
    click.echo(f"registered {v.ref} (seq {v.seq}, sha256 {v.sha256[:12]}, {v.size} bytes)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models(ctx, as_json) -> None:
    """List models."""
    items = _registry(ctx).models()
    if as_json:
        click.echo(json.dumps([{**m.__dict__, "created_at": m.created_at.isoformat()} for m in items], indent=2))
        return
    rows = [
        (m.name, m.version_count, m.latest, ", ".join(f"{a}->{v}" for a, v in sorted(m.aliases.items())), m.description)
        for m in items
    ]
    click.echo(table(["MODEL", "VERSIONS", "LATEST", "ALIASES", "DESCRIPTION"], rows))


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def versions(ctx, name, as_json) -> None:
    """List the versions of model NAME."""
    items = _registry(ctx).versions(name)
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in items], indent=2))
        return
    rows = [
        (
            v.seq,
            v.version,
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            v.sha256[:12],
            v.size,
            ", ".join(v.aliases),
            " ".join(f"{k}={val:g}" for k, val in sorted(v.metrics.items())),
            v.parent,
        )
        for v in items
    ]
    click.echo(table(["SEQ", "VERSION", "CREATED (UTC)", "SHA256", "BYTES", "ALIASES", "METRICS", "PARENT"], rows))


@cli.command()
@click.argument("ref")
@click.pass_context
def show(ctx, ref) -> None:
    """Show one version (REF: name, name:LABEL or name@ALIAS) as JSON."""
    click.echo(json.dumps(_registry(ctx).get(ref).to_dict(), indent=2))


@cli.group()
def alias() -> None:
    """List, set and remove aliases."""


@alias.command("list")
@click.argument("name")
@click.pass_context
def alias_list(ctx, name) -> None:
    """List the aliases of model NAME."""
    aliases = _registry(ctx).aliases(name)
    click.echo(table(["ALIAS", "VERSION"], sorted(aliases.items())))


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version")
@click.option("--expected", default=None, help="Move only if ALIAS now points here ('' = unset).")
@click.option("--reason", default="")
@click.pass_context
def alias_set(ctx, name, alias_name, version, expected, reason) -> None:
    """Point ALIAS of model NAME at VERSION."""
    v = _registry(ctx).set_alias(name, alias_name, version, expected=expected, reason=reason)
    click.echo(f"{name}@{alias_name} -> {v.version}")


@alias.command("remove")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.option("--reason", default="")
@click.pass_context
def alias_remove(ctx, name, alias_name, reason) -> None:
    """Remove ALIAS from model NAME."""
    _registry(ctx).remove_alias(name, alias_name, reason=reason)
    click.echo(f"removed {name}@{alias_name}")


@cli.command()
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.option("--reason", default="")
@click.pass_context
def rollback(ctx, name, alias_name, reason) -> None:
    """Move ALIAS of model NAME back to its previous target."""
    v = _registry(ctx).rollback(name, alias_name, reason=reason)
    click.echo(f"{name}@{alias_name} -> {v.version} (rolled back)")


@cli.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Only the newest N entries.")
@click.pass_context
def history(ctx, name, limit) -> None:
    """Show the audit log of model NAME."""
    click.echo(format_history(_registry(ctx).history(name, limit=limit or None)))


@cli.command()
@click.argument("ref")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE")
@click.option("--untag", multiple=True, metavar="KEY")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=NUMBER")
@click.option("--description", default=None)
@click.option("--reason", default="")
@click.pass_context
def update(ctx, ref, tags, untag, metrics, description, reason) -> None:
    """Change the tags, metrics or description of a version."""
    tag_map = {**dict(_pairs(tags, "--tag")), **{k: None for k in untag}}
    v = _registry(ctx).update(ref, tags=tag_map, metrics=_floats(metrics), description=description, reason=reason)
    click.echo(f"updated {v.ref}")


@cli.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Delete even if aliases point at it.")
@click.option("--reason", default="")
@click.pass_context
def delete(ctx, ref, force, reason) -> None:
    """Delete one version."""
    reg = _registry(ctx)
    target = reg.get(ref).ref
    reg.delete(target, force=force, reason=reason)
    click.echo(f"deleted {target}")


@cli.command()
@click.pass_context
def verify(ctx) -> None:
    """Rehash every artifact; exit status 1 if any is missing or corrupted, or if blobs are stored
    that no version refers to (their metadata was lost: see ``lepton recover``)."""
    report = _registry(ctx).verify()
    for p in report.problems:
        click.echo(f"{p.problem}: {p.ref} ({p.sha256[:12]})", err=True)
    for sha in report.orphan_blobs:
        click.echo(f"unreferenced: {sha[:12]} (stored, but no version refers to it)", err=True)
    click.echo(
        f"checked {report.versions_checked} versions, {report.blobs_checked} artifacts: "
        f"{len(report.problems)} problems, {len(report.orphan_blobs)} unreferenced blobs"
    )
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("path", required=False)
@click.option("--model", default="recovered", show_default=True,
              help="Model that the recovered versions are registered under.")
@click.pass_context
def recover(ctx, path, model) -> None:
    """Make a registry whose database was lost usable again, losing no artifact.

    A database without lepton's tables is moved aside (registry.db.lost-TIME), and every stored
    artifact that no version refers to is registered as a version of MODEL, labelled by its digest.
    """
    root = path or ctx.obj["path"]
    report = recover_registry(root, model=model, actor=ctx.obj["actor"])
    if report.moved_aside:
        click.echo(f"moved the lost database aside to {report.moved_aside}")
    for ref in report.recovered:
        click.echo(f"recovered {ref}")
    for line in report.skipped:
        click.echo(f"skipped {line}", err=True)
    click.echo(f"{len(report.recovered)} versions recovered, {len(report.skipped)} skipped")


@cli.command()
@click.option("--keep", "keep_latest", type=click.IntRange(min=0), required=True, help="Versions to keep per model.")
@click.option("--name", default=None, help="Only this model.")
@click.option("--dry-run", is_flag=True)
@click.pass_context
def gc(ctx, keep_latest, name, dry_run) -> None:
    """Delete unaliased versions beyond the newest N per model, and unused artifacts."""
    r = _registry(ctx).gc(keep_latest, name=name, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for ref in r.deleted_versions:
        click.echo(f"{verb} {ref}")
    click.echo(f"{verb} {len(r.deleted_versions)} versions, {r.blobs_removed} artifacts ({r.bytes_freed} bytes)")


_SERVE = json.loads(_core.server_config_defaults())


@cli.command()
@click.option("--registry", "serve_registry", default=None, help="Registry directory or postgresql:// URL (as the group option).")
@click.option("--host", default=None, show_default=_SERVE["host"], help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=None, show_default=str(_SERVE["port"]), type=int, help="Port (0: any free one).")
@click.option("--grpc-port", default=None, type=click.IntRange(0, 65535),
              help="Serve the protocol's gRPC service on this port too (0: any free one); none by default.")
@click.option("--token", envvar="LEPTON_TOKEN", default=None, show_default="$LEPTON_TOKEN or generated",
              help="Bearer token of the management endpoints.")
@click.option("--token-for-inference", is_flag=True, default=None, help="Inference needs the token too.")
@click.option("--open-feedback", is_flag=True, default=None,
              help="Take feedback without the token where it cannot move an alias.")
@click.option("--max-buffered-bytes", type=click.IntRange(min=1), default=None,
              show_default=str(_SERVE["max_buffered_bytes"]),
              help="Request and response bytes held across all connections; more is refused with 503.")
@click.option("--model", "model_specs", multiple=True, metavar="NAME[=@ALIAS|=VERSION]",
              help="Serve NAME at an alias or version (repeatable).")
@click.option("--policy", "policies", multiple=True, metavar="NAME=JSON", help="A served model's policy.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help='JSON file: {"models": {NAME: {"alias"|"versions", "policy"}}, "host", "port", ...}; '
                   "flags given override it.")
@click.option("--only", is_flag=True, default=None, help="Serve only the models named by --model or the config.")
@click.option("--threads", type=int, default=None, help="CPU budget per model (default: every core).")
@click.option("--max-batch-size", type=int, default=None, show_default=str(_SERVE["max_batch_size"]))
@click.option("--max-queue-delay-ms", type=float, default=None, show_default=str(_SERVE["max_queue_delay_ms"]))
@click.option("--http-threads", type=int, default=None, show_default=str(_SERVE["http_threads"]),
              help="Server threads at most (event loops plus helpers for loops blocked by a slow model).")
@click.option("--io-threads", type=int, default=None, show_default=str(_SERVE["io_threads"]),
              help="Event loops serving the connections.")
@click.option("--busy-poll-us", type=float, default=None, show_default=str(_SERVE["busy_poll_us"]),
              help="How long a loop polls after its last request before it sleeps (0: never).")
@click.option("--memory-budget", default=None, metavar="SIZE",
              help="Serve every version of every model under one memory budget (e.g. 2GB): versions load on "
                   "their first request and the least recently used idle ones are unloaded to make room.")
@click.option("--eviction", type=click.Choice(["lru", "lfu"]), default=None,
              help="Which idle version makes room under --memory-budget: the least recently (default) or the "
                   "least frequently used.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None, help="Append events as JSON lines.")
@click.option("--no-ui", is_flag=True, default=False, help="Serve no dashboard at /ui/.")
@click.pass_context
def serve(ctx, serve_registry, host, port, grpc_port, token, token_for_inference, open_feedback, max_buffered_bytes,
          model_specs, policies, config_path, only, threads, max_batch_size, max_queue_delay_ms, http_threads,
          io_threads, busy_poll_us, memory_budget, eviction, log_file, no_ui) -> None:
    """Serve the registry over HTTP (Open Inference Protocol v2) until SIGTERM or Ctrl-C.

    The configuration is read by the C++ core: the --config file, with the flags given on top (a
    --model replaces the file's entry for that model; a --policy sets its policy only)."""
    import logging

    from .logs import log_to_file
    from .server import serve as start

    models: dict = {}
    for item in model_specs:
        name, sep, target = item.partition("=")
        spec: dict = {"alias": None, "versions": None, "policy": None}
        if sep and target.startswith("@"):
            spec["alias"] = target[1:]
        elif sep:
            spec["versions"] = [target]
        models[name] = spec
    for name, text in _pairs(policies, "--policy"):
        try:
            policy = json.loads(text)
        except ValueError as e:
            raise click.BadParameter(f"{name}: not valid JSON: {e}", param_hint="--policy") from None
        models.setdefault(name, {})["policy"] = policy
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_file:
        log_to_file(log_file)
    registry = Registry(serve_registry or ctx.obj["path"], actor=ctx.obj["actor"])
    server = start(
        registry,
        config=config_path,
        host=host,
        port=port,
        grpc_port=grpc_port,
        token=token,
        token_for_inference=token_for_inference,
        open_feedback=open_feedback,
        max_buffered_bytes=max_buffered_bytes,
        models=models or None,
        only=only,
        threads=threads,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        http_threads=http_threads,
        io_threads=io_threads,
        busy_poll_us=busy_poll_us,
        ui=False if no_ui else None,
        **({} if memory_budget is None else {"memory_budget": memory_budget}),
        **({} if eviction is None else {"eviction": eviction}),
    )
    click.echo(f"lepton: serving {', '.join(server.models) or 'no models'} on {server.url}", err=True)
    if server.grpc_target:
        click.echo(f"lepton: gRPC (inference.GRPCInferenceService) on {server.grpc_target}", err=True)
    if server.ui_url:
        click.echo(f"lepton: dashboard on {server.ui_url}", err=True)
    if not token:
        click.echo(f"lepton: management token (set LEPTON_TOKEN to choose one): {server.token}", err=True)
    server.serve_forever()
    click.echo("lepton: stopped", err=True)


@cli.command()
@click.option("--registry", "ui_registry", default=None, help="Registry directory or postgresql:// URL (as the group option).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--token", envvar="LEPTON_TOKEN", default=None, show_default="$LEPTON_TOKEN or generated",
              help="The token the dashboard asks for.")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in a web browser.")
@click.pass_context
def ui(ctx, ui_registry, host, port, token, open_browser) -> None:
    """Open the dashboard on a registry, serving no models: its models, versions, lineage, metric
    diffs and audit history, and alias moves and rollbacks (with the token). Runs until Ctrl-C."""
    from .server import serve as start

    registry = Registry(ui_registry or ctx.obj["path"], actor=ctx.obj["actor"])
    server = start(registry, host=host, port=port, token=token, only=True, ui=True)
    click.echo(f"lepton: dashboard on {server.ui_url}", err=True)
    if not token:
        click.echo(f"lepton: token (set LEPTON_TOKEN to choose one): {server.token}", err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.ui_url or "")
    server.serve_forever()
    click.echo("lepton: stopped", err=True)


@cli.command()
@click.option(
    "--registry",
    "demo_path",
    default="./lepton-demo",
    show_default=True,
    help="Folder for the demo's registry (recreated on each run).",
)
def demo(demo_path: str) -> None:
    """Run the end-to-end demo on a local registry folder."""
    from .demo import run

    run(demo_path)


@cli.command("k8s")
@click.argument("model")
@click.argument("versions", nargs=-1, required=True)
@click.option("--policy", default=None, metavar="JSON", help="The router's policy over the versions.")
@click.option("--image", default=f"lepton:{__version__}", show_default=True)
@click.option("--namespace", default="default", show_default=True)
@click.option("--namespace-per-version", is_flag=True, help="Each version in a namespace of its own.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="Pods per version.")
@click.option("--router-replicas", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
def k8s(model, versions, policy, image, namespace, namespace_per_version, replicas, router_replicas, output) -> None:
    """Kubernetes manifests for MODEL with each of VERSIONS in pods of its own, and a router that
    runs the policy over them as remote versions (apply after deploy/kubernetes/secret.yaml)."""
    from . import k8s as manifests

    spec = None
    if policy is not None:
        try:
            spec = json.loads(policy)
        except ValueError as e:
            raise InvalidArgument(f"--policy is not JSON: {e}") from None
        _core.policy_from_json(json.dumps(spec))  # refused now, with its reason
    text = manifests.dump(manifests.manifests(
        model, list(versions), policy=spec, image=image, namespace=namespace,
        namespace_per_version=namespace_per_version, replicas=replicas, router_replicas=router_replicas))
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)


def main(argv: Optional[Sequence[str]] = None) -> None:
    cli.main(args=argv, prog_name="lepton")


if __name__ == "__main__":
    main()
