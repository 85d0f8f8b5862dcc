"""The ``supermask`` command line. A thin shell: click parses and validates, then one library
function does the work. Heavy imports (torch, onnxruntime) happen inside the commands.

Every :class:`~supermask.errors.SupermaskError` becomes a one-line ``Error: ...`` message and
exit status 1; usage errors exit with status 2 (click's convention).
"""

from __future__ import annotations

import json
import logging
import sys

import click

from . import __version__
from .cli_deploy import max_memory_option
from .errors import SupermaskError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SupermaskError as e:
            err = click.ClickException(str(e))
            err.exit_code = getattr(e, "exit_code", 1)  # 130 for an interrupted training, as for Ctrl-C
            raise err from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supermask")
@click.option("-v", "--verbose", count=True,
              help="More log output: -v adds other libraries' messages, -vv debug messages. By default "
                   "supermask says what it does (info) and warns.")
def main(verbose: int) -> None:
    """Compress networks into supermask tickets (seed + init spec + packed mask) and run them.

    \b
    Typical use:
      supermask find --model lenet-300-100 --dataset fashion-mnist -o runs/fm
      supermask pack --run runs/fm --keep 0.1 -o model.smask
      supermask inspect model.smask
    """

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat())
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    logging.basicConfig(level=level if verbose else logging.WARNING, handlers=[handler])  # other libraries
    logging.getLogger("supermask").setLevel(level)


class _LogFormat(logging.Formatter):
    """Messages as a user reads them: what happened (info) or ``warning: ...``; debug lines
    (-vv) also say where they come from."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        if record.levelno <= logging.DEBUG:
            return f"debug {record.name}: {msg}"
        return msg


def _human_bytes(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB" if n < 10 << 20 else f"{n / (1 << 20):,.1f} MiB"


def _is_accuracy(key: str, value) -> bool:
    return (key == "accuracy" or key.endswith("_accuracy")) and isinstance(value, float) and 0 <= value <= 1


def format_accuracy(fraction: float) -> str:
    """An accuracy for people to read: a percentage with two decimals (JSON keeps the fraction)."""
    return f"{100 * fraction:.2f} %"


def format_pairs(pairs: list[tuple[str, str]], gap: int = 2) -> list[str]:
    """"key value" lines with every value starting in the same column, however long the keys."""
    width = max((len(k) for k, _ in pairs), default=0) + gap
    return [f"{k:<{width}}{v}".rstrip() for k, v in pairs]


def format_summary(path: str, s: dict, extra: list[tuple[str, str]] = ()) -> str:
    """Human-readable text of a ticket summary (see :meth:`Ticket.summary`); ``extra`` adds
    (key, value) lines after the metadata, aligned with the rest."""
    shape = "x".join(map(str, s["input_shape"]))
    init = s["init"]
    pairs = [
        ("ticket", f"{path}  ({s['file_bytes']:,} bytes, sha256 {s['sha256'][:16]})"),
        ("model", f"{s['architecture']}  input {shape}  {s['num_classes']} classes"),
        ("seed", f"{s['seed']}  generator {s['generator']['name']} v{s['generator']['version']}"
                 f"  init {init['scheme']} (gain^2 {init['gain_sq']:g})"),
        ("criterion", f"{s['criterion'] or '-'}  keep {s['keep'] if s['keep'] is not None else '-'}"),
        ("weights", f"{s['num_kept']:,} kept of {s['num_weights']:,} ({100 * (s['density'] or 0):.2f} %)"
                    f"  {s['bits_per_weight']:.3f} bits/weight (whole file)"),
        ("vs float32", f"{_human_bytes(s['dense_float32_bytes'])} dense -> {_human_bytes(s['file_bytes'])} ticket"
                       f"  ({s['compression_ratio']:.1f}x compression)"),
        ("bytes", f"{s['mask_bytes']:,} masks + {s['stored_bytes']:,} stored values + {s['overhead_bytes']:,} "
                  f"header, graph and checksum (format version {s['version']})"
                  + (f"; graph {s['graph']['bytes']:,} bytes, compressed with the header to "
                     f"{s['graph']['section_bytes']:,}" if s["graph"] else "")),
    ]
    for k, v in s["metadata"].items():
        if k == "model" and v == s["architecture"]:
            continue  # already on the model line
        shown = format_accuracy(v) if _is_accuracy(k, v) else f"{v:.6g}" if isinstance(v, float) else str(v)
        pairs.append((str(k), shown))
    pairs.extend(extra)
    lines = format_pairs(pairs)
    scaled = any(t["multiplier"] != 1.0 for t in s["tensors"])
    rows = [("tensor", "shape", "role", "codec", "kept", "density", "bytes", "bits/w") + (("x",) if scaled else ())]
    for t in s["tensors"]:
        generated = t["role"] in ("masked", "regenerated")
        rows.append((
            t["name"], "x".join(map(str, t["shape"])), t["role"], t["codec"] or "-",
            f"{t['num_kept']:,}" if generated else "-", "-" if t["density"] is None else f"{100 * t['density']:.2f}%",
            f"{t['payload_bytes']:,}", "-" if t["bits_per_weight"] is None else f"{t['bits_per_weight']:.3f}",
        ) + ((f"{t['multiplier']:.6g}" if generated else "-",) if scaled else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


@main.command()
@click.argument("ticket", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON (accuracies and densities as fractions, not percentages).")
@click.option("--verify/--no-verify", default=False,
              help="Also regenerate every tensor from the seed and check it against the ticket's fingerprints "
                   "(piece by piece: memory stays small whatever the tensor sizes).")
@max_memory_option
def inspect(ticket: str, as_json: bool, verify: bool, max_memory: int | None) -> None:
    """Summarise a ticket: model, seed, init, sizes and per-tensor densities."""
    from .ticket import read_ticket

    t = read_ticket(ticket, max_memory=max_memory)
    if verify:
        t.verify()
    s = t.summary()
    s["verified"] = verify
    if as_json:
        click.echo(json.dumps(s, indent=2))
    else:
        extra = [("verified", "all regenerated tensors match their fingerprints")] if verify else []
        click.echo(format_summary(ticket, s, extra))


def _register_commands() -> None:
    # Command modules stay import-light (no torch, onnxruntime or matplotlib at import time).
    from . import cli_baseline, cli_deploy, cli_report, cli_train

    for module in (cli_train, cli_deploy, cli_report, cli_baseline):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register_commands()


if __name__ == "__main__":
    main()
