"""Deployment commands: ``export``, ``eval``, ``predict``. Torch-free.

Each command validates its options with click, then calls one function of
:mod:`supermask.export` or :mod:`supermask.runtime`; onnx and onnxruntime are imported inside
the commands, so ``supermask --help`` stays fast.
"""

from __future__ import annotations

import collections
import contextlib
import json
import warnings

import click

from . import datasets
from .cli_train import threads_option
from .runtime.model import DEVICES  # torch- and onnxruntime-free at import time

_DEVICE = click.Choice(list(DEVICES))
_DEVICE_HELP = ("auto: CUDA when onnxruntime can use it, else the CPU (with a note when a GPU build of "
                "onnxruntime is installed but CUDA could not be used); cuda: fail unless CUDA is used; "
                "cpu: CPU only.")
_JSON_HELP = "Print the result as JSON (accuracies as fractions, not percentages)."
_WEIGHTS_HELP = ("How the weights are held. lowbit: the ternary linear layers of a signed-constant ticket as exact "
                 "4-bit MatMulNBits (about 8x less memory; an error for other tickets); float: float32; auto: "
                 "4 bits only for ternary layers of 8M+ weights, where that costs little or no time, else float32 "
                 "(the reason is in the JSON's weights_note).")


def weights_option(f):
    """--weights auto|float|lowbit (see supermask.runtime.load)."""
    from .runtime.lowbit import WEIGHTS

    return click.option("--weights", "weights", type=click.Choice(list(WEIGHTS)), default="auto",
                        show_default=True, help=_WEIGHTS_HELP)(f)


def _note(result: dict) -> None:
    """Print why CUDA was not used, when that is news: with a GPU build of onnxruntime. On a
    CPU-only build the CPU is the expected device, and the note only goes to the debug log (-vv)."""
    from .runtime.model import note_worth_showing

    if note_worth_showing(result.get("note")):
        click.echo(f"note: {result['note']}", err=True)
    for line in result.get("warnings") or ():  # inputs far outside the training range
        click.echo(f"warning: {line}", err=True)


def _max_memory(ctx, param, value: str | None) -> int | None:
    if value is None:
        return None
    from .errors import SupermaskError
    from .ticket import parse_size

    try:
        return parse_size(value)
    except SupermaskError as e:
        raise click.BadParameter(str(e)) from None


def max_memory_option(f):
    """--max-memory SIZE: the memory cap for decoding, regenerating and running a ticket."""
    return click.option(
        "--max-memory", "max_memory", callback=_max_memory, default=None, metavar="SIZE",
        help="Refuse a ticket whose weights (and onnxruntime session) would need more memory than SIZE, "
             "before allocating it: bytes, or a number with a unit (512MiB, 2GiB, 4GB). "
             "Default: $SUPERMASK_MAX_MEMORY, else 4GiB.")(f)


@contextlib.contextmanager
def _range_warnings_as_lines():
    """Silence the runtime's InputRangeWarning: the result carries the same lines, which
    :func:`_note` prints as ``warning: ...``."""
    from .runtime.inputs import InputRangeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputRangeWarning)
        yield


@click.command()
@click.argument("ticket", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="The ONNX file to write (required).")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=str), default=None,
              help="Instead of TICKET: a `find --method imp` run, to write the retrained network of --round "
                   "(trained weights: an ONNX file, never a ticket). Needs torch.")
@click.option("--round", "imp_round", type=click.IntRange(0), default=None,
              help="With --run: the round (0: the dense network).")
@click.option("--variant", default="original", show_default=True,
              help="With --run: which training of the round (original, or a control the run trained).")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=str), default=None, hidden=True,
              help="Old name of -o/--out.")
@click.option("--format", "fmt", type=click.Choice(["dense", "sparse", "lowbit"]), default="dense", show_default=True,
              help="dense: plain initializers; sparse: each tensor (weights and biases) stored as "
                   "values + int64 indices when that is smaller; lowbit: the ternary linear layers of a "
                   "signed-constant ticket as exact 4-bit com.microsoft.MatMulNBits (onnxruntime only), "
                   "the rest dense.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@max_memory_option
def export(ticket: str | None, out: str | None, output: str | None, run_dir: str | None, imp_round: int | None,
           variant: str, fmt: str, as_json: bool, max_memory: int | None) -> None:
    """Write a self-contained ONNX model of TICKET (input: raw pixels, output: logits) to -o/--out.

    With --run DIR --round N instead of TICKET: the retrained network of one round of an IMP run.
    """
    if out is None and output is None:
        raise click.MissingParameter(param_hint="'-o' / '--out'", param_type="option")
    if out is not None and output is not None and out != output:
        raise click.UsageError(f"the output file is given twice (-o {out} and --output {output}); give -o/--out once")
    output = out if out is not None else output
    if (ticket is None) == (run_dir is None):
        raise click.UsageError("give a TICKET, or --run DIR --round N for the retrained network of an IMP run")
    if run_dir is not None:
        if imp_round is None:
            raise click.UsageError("--run needs --round N: which round's retrained network to write")
        if fmt == "lowbit":
            raise click.UsageError("--format lowbit is for tickets; retrained weights are not ternary")
        from .train.pack import export_retrained

        r = export_retrained(run_dir, output, round=imp_round, variant=variant, fmt=fmt)
        if as_json:
            click.echo(json.dumps(r, indent=2))
        else:
            acc = "" if r["accuracy"] is None else f", test accuracy {100 * r['accuracy']:.2f} % in the run"
            click.echo(f"wrote {output}: {r['file_bytes']:,} bytes ({fmt}), the retrained network of round "
                       f"{imp_round} ({variant}){acc}; trained weights, not a ticket")
        return
    if imp_round is not None:
        raise click.UsageError("--round goes with --run (an IMP run); for a ticket of a round's mask use "
                               "`supermask pack --run DIR --round N`")
    try:
        from .export import export_ticket
    except ImportError as e:
        from .errors import RuntimeUnavailableError

        raise RuntimeUnavailableError(f"writing an ONNX file needs the onnx package ({e}); install it with "
                                      f"`pip install \"supermask[export]\"`") from None

    from .ticket import memory_cap

    with memory_cap(max_memory):
        r = export_ticket(ticket, output, fmt)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
    else:
        click.echo(f"wrote {r.path}: {r.file_bytes:,} bytes ({fmt}; ticket {r.ticket_bytes:,} bytes), "
                   + (f"{len(r.lowbit_tensors)} 4-bit, " if r.lowbit_tensors else "")
                   + f"{len(r.sparse_tensors)} sparse and {len(r.dense_tensors)} dense tensors, "
                   f"ONNX IR {r.ir_version}, opset {r.opset}")


@click.command("eval")
@click.argument("ticket", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dataset", required=True,
              help=f"Data set to evaluate on: a name ({', '.join(datasets.DATASETS)}), a .npz file or an image "
                   f"folder; it must match the ticket's input shape and classes.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Which split to evaluate.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder holding the data set files.")
@click.option("--download", is_flag=True, help="Download the data set if it is not in --data-dir.")
@click.option("--device", type=_DEVICE, default="auto", show_default=True, help=_DEVICE_HELP)
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N examples.")
@weights_option
@threads_option("onnxruntime")
@max_memory_option
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
def eval_(ticket: str, dataset: str, split: str, data_dir: str | None, download: bool, device: str,
          batch_size: int, limit: int | None, weights: str, threads: int | None, max_memory: int | None,
          as_json: bool) -> None:
    """Test accuracy of TICKET on a data set, computed with onnxruntime."""
    from .runtime.tasks import evaluate_dataset
    from .ticket import memory_cap

    with _range_warnings_as_lines(), memory_cap(max_memory):
        r = evaluate_dataset(ticket, dataset, split=split, data_dir=data_dir, download=download, device=device,
                             batch_size=batch_size, limit=limit, threads=threads, weights=weights)
    _note(r)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"accuracy    {100 * r['accuracy']:.2f} %  ({r['correct']:,} / {r['num_examples']:,})"
               f"  {r['dataset']} {r['split']}")
    if r["ticket_accuracy"] is not None:
        click.echo(f"recorded    {100 * r['ticket_accuracy']:.2f} %  by find on {r['ticket_dataset']} "
                   f"({r['ticket_test_examples']} examples), stored in the ticket")
    click.echo(f"provider    {r['provider']}" + ("  (IO binding)" if r["io_binding"] else ""))
    click.echo(f"time        {r['seconds']:.3f} s inference ({r['examples_per_second']:,.0f} examples/s, "
               f"batch {r['batch_size']}), {1000 * r['load_seconds']:.1f} ms ticket -> session")
    click.echo(f"weights     {r['weights_summary']}")


@click.command()
@click.argument("ticket", type=click.Path(dir_okay=False, path_type=str))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--device", type=_DEVICE, default="auto", show_default=True, help=_DEVICE_HELP)
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True,
              help="Also list the K most likely classes.")
@weights_option
@threads_option("onnxruntime")
@max_memory_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the predictions as JSON (probabilities as fractions).")
def predict(ticket: str, inputs: tuple[str, ...], device: str, top_k: int, weights: str, threads: int | None,
            max_memory: int | None, as_json: bool) -> None:
    """Predict classes for INPUTS: .npy arrays (one example or a batch) and image files.

    \b
    Inputs must have the ticket's input shape, which `supermask inspect TICKET` prints
    ("input 1x28x28" is (1, 28, 28)):
      .npy file    a batch of shape (N, *input_shape), or one example of shape input_shape;
                   one-channel images may leave out the channel axis: (N, H, W) or (H, W)
      image file   one example of exactly the input's height and width (not resized);
                   colour is converted to the input's channels
    Give raw values on the scale the model was trained on (the ticket applies its own
    preprocessing). A file of another shape is an error that names the expected shape.
    """
    from .runtime.tasks import predict_files
    from .ticket import memory_cap

    with _range_warnings_as_lines(), memory_cap(max_memory):
        r = predict_files(ticket, list(inputs), device=device, top_k=top_k, threads=threads, weights=weights)
    _note(r)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    per_file = collections.Counter(row["input"] for row in r["predictions"])
    for row in r["predictions"]:
        where = row["input"] + (f"[{row['index']}]" if per_file[row["input"]] > 1 else "")
        line = f"{where}\t{row['label']}\t(class {row['class']}, p={row['probability']:.3f})"
        if top_k > 1:
            line += "\t" + ", ".join(f"{lab} {p:.3f}" for lab, p in row["top"][1:])
        click.echo(line)


COMMANDS = [export, eval_, predict]
