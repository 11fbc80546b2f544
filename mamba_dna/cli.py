"""The `mamba-dna` command line: one small function per command, each calling a pipeline.

User mistakes raise `MambaDNAError`; `main()` prints them as one line on stderr and exits
with its code (2 for bad input/options). Results go to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import os
import sys

import typer

from mamba_dna import __version__
from mamba_dna.errors import MambaDNAError

app = typer.Typer(
    name="mamba-dna",
    help=(
        "Mamba (selective state space) DNA language models at single-nucleotide resolution, "
        "up to a megabase.\n\n"
        "Typical flow: tokenize -> pretrain -> score / embed / classify. "
        "Start with `mamba-dna demo` to see everything run on real genomes."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would dump tensors into batch-job logs
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mamba-dna {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Mamba DNA language models (see `mamba-dna COMMAND --help`)."""


@app.command()
def info() -> None:
    """Versions, devices and which selective-scan backend will run, and why.

    Example:  mamba-dna info
    """
    import platform

    import torch

    from mamba_dna.kernels import choose_backend, triton_available

    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    lines = [
        ("mamba-dna", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_v),
        ("cpu threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"))
        dev = "cuda"
    else:
        lines.append(("cuda", "no CUDA device"))
        dev = "cpu"
    backend, why = choose_backend(dev)
    lines.append(("scan backend", f"{backend} ({why})"))
    lines.append(("triton importable", str(triton_available())))
    if os.environ.get("MAMBA_DNA_BACKEND"):
        lines.append(("MAMBA_DNA_BACKEND", os.environ["MAMBA_DNA_BACKEND"]))
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        typer.echo(f"{k:<{w}}  {v}")


# --- commands from the pipelines are registered below (one small function each) ---


@app.command()
def tokenize(
    fasta: list[str] = typer.Argument(..., help="FASTA files: plain, .gz (cached once) or bgzip."),
    out: str = typer.Option(..., "--out", "-o", help="Shard directory to write."),
    window: int = typer.Option(16384, "--window", "-w", help="Window length in bases."),
    stride: int = typer.Option(None, help="Step between windows [default: --window]."),
    regions: str = typer.Option(None, "--regions", help="BED file: only these regions."),
    max_n_fraction: float = typer.Option(0.5, help="Drop windows with more N than this."),
    pad: str = typer.Option("N", help="Last window of a record: 'N' (pad) or 'drop'."),
    split_by: str = typer.Option("record", help="Hold out whole 'record's or position 'block's."),
    block_size: int = typer.Option(None, help="--split-by block: block size [8 x --window]."),
    val_fraction: float = typer.Option(0.1, help="Share of records/blocks for validation."),
    test_fraction: float = typer.Option(0.1, help="Share of records/blocks for test."),
    seed: int = typer.Option(0, help="Seed of the split assignment."),
    both_strands: bool = typer.Option(False, help="Also store each window's reverse complement."),
    invalid: str = typer.Option("error", help="Other characters: 'error' or map to 'N' (counted)."),
    overwrite: bool = typer.Option(False, help="Replace an existing shard directory."),
) -> None:
    """Tokenize FASTA files into a memory-mapped shard directory for `pretrain`.

    Writes {train,val,test}.tokens.npy (uint8 windows), softmask bits, a coordinate index
    and manifest.json (sources + sha256, tokenizer, window, split). Prints the directory.

    Example:  mamba-dna tokenize ecoli.fna.gz --out shards/ecoli --window 16384 --split-by block
    """
    from mamba_dna.genome import WindowSpec
    from mamba_dna.shards import write_shards

    spec = WindowSpec(
        length=window, stride=stride, max_n_fraction=max_n_fraction, pad=pad,
        split_by=split_by, block_size=block_size, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, strands="both" if both_strands else "+",
    )
    write_shards(fasta, out, spec, regions=regions, invalid=invalid, overwrite=overwrite)
    typer.echo(out)


@app.command()
def convert(
    src: str = typer.Argument(..., help="Checkpoint directory (config.json + weights)."),
    out: str = typer.Argument(..., help="Output model directory (mamba-dna format)."),
    from_: str = typer.Option("auto", "--from", help="Source layout: mamba_ssm, transformers or auto."),
    tokenizer: str = typer.Option(
        "auto", help="dna (ids are mamba-dna's nucleotide ids), external (any other vocab) or auto."
    ),
    dtype: str = typer.Option("float32", help="Weights dtype: float32, bfloat16 or float16."),
) -> None:
    """Import a state-spaces/mamba (mamba_ssm) or HuggingFace transformers Mamba checkpoint.

    Example:  mamba-dna convert ./mamba-130m-hf ./models/mamba-130m --from transformers
    """
    from mamba_dna.convert import convert as _convert
    from mamba_dna.log import info as _info

    model = _convert(src, out, fmt=from_, tokenizer=tokenizer, dtype=dtype)
    c = model.config
    _info(f"converted {src}: {c.n_layer} layers x d_model {c.d_model}, vocab {c.vocab_size}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters")
    typer.echo(out)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user mistakes become one line and an exit code."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except MambaDNAError as e:
        print(f"mamba-dna: error: {e.one_line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("mamba-dna: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # Usage errors from the (vendored) click layer: print click's message, exit 2.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            print("mamba-dna: aborted", file=sys.stderr)
            sys.exit(1)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
