"""The `mamba-dna` command line: one small function per command, each calling a pipeline.

User mistakes raise `MambaDNAError`; `main()` prints them as one line on stderr and exits
with its code (2 for bad input/options). Results go to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from mamba_dna import __version__
from mamba_dna.errors import MambaDNAError
from mamba_dna.pipelines.classify.config import ClassifyConfig, FinetuneConfig
from mamba_dna.pipelines.demo.config import DemoConfig
from mamba_dna.pipelines.embed.config import EmbedConfig  # (light: the defaults of the options)
from mamba_dna.pipelines.pretrain.config import PretrainConfig
from mamba_dna.pipelines.score.config import ScoreConfig

app = typer.Typer(
    name="mamba-dna",
    help=(
        "Mamba (selective state space) DNA language models at single-nucleotide resolution, "
        "up to a megabase.\n\n"
        "Typical flow: tokenize -> pretrain -> score / embed / classify. "
        "Start with `mamba-dna demo` to see everything run on real genomes."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,  # help strings render as written: "[--window]" is text, not markup
    pretty_exceptions_show_locals=False,  # locals would dump tensors into batch-job logs
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _command_group(name: str, help_text: str) -> typer.Typer:
    """A sub-command group (`mamba-dna NAME ...`) registered on the app."""
    group = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None,
                        context_settings={"help_option_names": ["-h", "--help"]})
    app.add_typer(group, name=name)
    return group


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
    src: str = typer.Argument(..., help="Checkpoint directory (config.json + weights) or hf:ORG/NAME[@REV]."),
    out: str = typer.Argument(..., help="Output model directory (mamba-dna format)."),
    from_: str = typer.Option("auto", "--from", help="Source layout: mamba_ssm, transformers, caduceus or auto."),
    tokenizer: str = typer.Option(
        "auto", help="dna (ids are mamba-dna's nucleotide ids), external (any other vocab) or auto."
    ),
    dtype: str = typer.Option("float32", help="Weights dtype: float32, bfloat16 or float16."),
) -> None:
    """Import a state-spaces/mamba (mamba_ssm), HuggingFace transformers Mamba, or Caduceus /
    PlantCaduceus checkpoint (never running the checkpoint's own code).

    Example:  mamba-dna convert ./mamba-130m-hf ./models/mamba-130m --from transformers

    Example:  mamba-dna convert hf:kuleshov-group/PlantCaduceus_l20 ./models/plantcaduceus-l20
    """
    from mamba_dna.convert import convert as _convert
    from mamba_dna.log import info as _info

    model = _convert(src, out, fmt=from_, tokenizer=tokenizer, dtype=dtype)
    c = model.config
    _info(f"converted {src}: {c.n_layer} layers x d_model {c.d_model}, vocab {c.vocab_size}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters")
    typer.echo(out)


embed_app = _command_group("embed", "Embeddings of windows or BED regions into HDF5 (`embed merge` joins shards).")


@embed_app.callback(invoke_without_command=True)
def embed(
    ctx: typer.Context,
    fasta: str = typer.Option(None, "--fasta", "-f", help="Reference FASTA (plain, .gz, bgzip)."),
    model: str = typer.Option(None, "--model", "-m", help="Model directory (mamba-dna, Caduceus, PlantCaduceus) or hf:ORG/NAME[@REV]."),
    out: str = typer.Option(None, "--out", "-o", help="Output HDF5 file."),
    bed: str = typer.Option(EmbedConfig.bed, "--bed", help="BED regions (0-based half-open; strand col 6)."),
    window: int = typer.Option(EmbedConfig.window, "--window", "-w", help="Window length in bp [0: whole records]."),
    stride: int = typer.Option(EmbedConfig.stride, "--stride", help="Step between windows [--window]."),
    pool: str = typer.Option(EmbedConfig.pool, "--pool", help="mean | max | last (causal models only) | none."),
    per_position: bool = typer.Option(EmbedConfig.per_position, "--per-position", help="Also write (length, d) per item."),
    layer: int = typer.Option(EmbedConfig.layer, "--layer", help="Residual stream after K blocks (default: after the final norm)."),
    rc_average: bool = typer.Option(EmbedConfig.rc_average, "--rc-average",
                                    help="Strand-symmetric output: the mean with the reverse-complement pass "
                                         "(Caduceus-PS: of its two halves, free; without it PS stores 2 x d_model)."),
    dtype: str = typer.Option(EmbedConfig.dtype, "--dtype", help="float32 | float16 (stored values)."),
    compression: str = typer.Option(
        EmbedConfig.compression, "--compression",
        help="Per-position filter: none (fastest; embeddings compress by only 7-14%) | lzf "
             "(shuffle+LZF; R/MATLAB need the LZF plugin) | gzip (level 1: any HDF5 reader)."),
    piece: int = typer.Option(EmbedConfig.piece, "--piece",
                              help="Positions per streamed piece (causal models: memory; bidirectional ones run each item whole, O(L x d))."),
    shard: str = typer.Option(EmbedConfig.shard, "--shard", help="i/n (0-based): this array job's share."),
    resume: bool = typer.Option(EmbedConfig.resume, "--resume", help="Continue OUT.partial, skip done items."),
    device: str = typer.Option(EmbedConfig.device, "--device", help="auto | cpu | cuda | cuda:K."),
) -> None:
    """Embed genome windows or BED regions with a model; writes HDF5 (schema: `mamba_dna.io.hdf5`).

    Example:  mamba-dna embed --fasta ecoli.fna.gz --window 16384 --model models/m --out emb.h5 --pool mean --rc-average

    Caduceus:  mamba-dna embed --fasta maize.fa --window 512 --model hf:kuleshov-group/PlantCaduceus_l20 --out emb.h5 --rc-average
    """
    if ctx.invoked_subcommand is not None:
        return
    from mamba_dna.errors import ConfigError
    from mamba_dna.pipelines.embed import merge, run_embed, shard_path

    missing = [n for n, v in (("--fasta", fasta), ("--model", model), ("--out", out)) if not v]
    if missing:
        raise ConfigError(f"embed: missing {', '.join(missing)}",
                          hint="see `mamba-dna embed --help`")
    from mamba_dna import rankshard

    def make(out_: str, shard_: str | None, device_: str) -> EmbedConfig:
        return EmbedConfig(fasta=fasta, model=model, out=out_, bed=bed, window=window,
                           stride=stride, pool=pool, per_position=per_position, layer=layer,
                           rc_average=rc_average, dtype=dtype, compression=compression,
                           piece=piece, shard=shard_,
                           resume=resume, device=device_)

    ranks = rankshard.launcher_shard(shard)
    if ranks is None:
        typer.echo(str(run_embed(make(out, shard, device))))
        return
    # torchrun / srun: rank r embeds shard r/world; rank 0 merges the parts into --out.
    base, dev = str(rankshard.with_token(out)), rankshard.rank_device(device)
    done = rankshard.run_ranks(
        out, *ranks,
        run_part=lambda s: run_embed(make(base, s, dev)),
        part_path=lambda i, n: shard_path(Path(base), f"{i}/{n}"),
        merge=merge,
    )
    if done:
        typer.echo(done)


@embed_app.command("merge")
def embed_merge(
    shards: list[str] = typer.Argument(..., help="Shard files written with --shard i/n."),
    out: str = typer.Option(..., "--out", "-o", help="Merged HDF5 file."),
) -> None:
    """Join `embed --shard i/n` outputs into one file, identical to a single run.

    Example:  mamba-dna embed merge emb.shard*-of-8.h5 --out emb.h5
    """
    from mamba_dna.pipelines.embed import merge

    typer.echo(str(merge(shards, out)))


_PRETRAIN = PretrainConfig.defaults()  # pretrain flags default to None ("not given": --config wins)


@app.command()
def pretrain(
    inputs: list[str] = typer.Argument(None, help="FASTA files or one `tokenize` directory (not needed with --resume)."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory (an existing run is resumed)."),
    config: str = typer.Option(None, help="PretrainConfig JSON (e.g. another run's config.json)."),
    model_config: str = typer.Option(None, help="MambaConfig JSON or a model directory: the architecture."),
    arch: str = typer.Option(None, help="mamba (causal), bimamba, caduceus-ph (BiMamba + RC augmentation, "
                             "strand-averaged at inference) or caduceus-ps (RC-equivariant) [mamba]."),
    objective: str = typer.Option(None, help="clm (next base; mamba only) or mlm (masked bases; the "
                                  "bidirectional archs only) [the arch's own]."),
    mask_prob: float = typer.Option(None, help=f"mlm: share of bases chosen as targets (80% MASK, 10% random, 10% kept) [{_PRETRAIN['mask_prob']}]."),
    d_model: int = typer.Option(None, help=f"Model width [{_PRETRAIN['model']['d_model']}]."),
    n_layer: int = typer.Option(None, help=f"Number of Mamba blocks [{_PRETRAIN['model']['n_layer']}]."),
    d_state: int = typer.Option(None, help="SSM state size N [16]."),
    seq_len: int = typer.Option(None, help=f"Training window length in bp [{_PRETRAIN['seq_len']}]."),
    seq_len_start: int = typer.Option(None, help="Sequence-length warmup: first length (doubles per stage)."),
    seq_warmup_steps: int = typer.Option(None, help="Steps spent below --seq-len (split over the stages)."),
    steps: int = typer.Option(None, help=f"Optimizer steps [{_PRETRAIN['steps']}]."),
    batch_size: int = typer.Option(None, help=f"Global windows per step, over all processes [{_PRETRAIN['batch_size']}]."),
    grad_accum: int = typer.Option(None, help=f"Micro-batches per step on each process [{_PRETRAIN['grad_accum']}]."),
    lr: float = typer.Option(None, help=f"Peak learning rate [{_PRETRAIN['lr']:g}]."),
    warmup_steps: int = typer.Option(None, help=f"Linear LR warmup steps, then cosine [{_PRETRAIN['warmup_steps']}]."),
    weight_decay: float = typer.Option(None, help=f"AdamW weight decay on matrices [{_PRETRAIN['weight_decay']}]."),
    split_by: str = typer.Option(None, help=f"FASTA held-out split: 'block' (regions) or 'record' [{_PRETRAIN['split_by']}]."),
    val_fraction: float = typer.Option(None, help=f"Share of blocks/records for validation [{_PRETRAIN['val_fraction']}]."),
    eval_every: int = typer.Option(None, help=f"Validate every N steps [{_PRETRAIN['eval_every']}]."),
    eval_windows: int = typer.Option(None, help=f"Validation windows per evaluation [{_PRETRAIN['eval_windows']}]."),
    checkpoint_every: int = typer.Option(None, help=f"Checkpoint every N steps [{_PRETRAIN['checkpoint_every']}]."),
    log_every: int = typer.Option(None, help=f"Training metrics row every N steps [{_PRETRAIN['log_every']}]."),
    softmask_weight: float = typer.Option(None, help=f"Loss weight of soft-masked (lowercase) bases [{_PRETRAIN['softmask_weight']:g}]."),
    rc_augment: bool = typer.Option(None, "--rc/--no-rc", help="Random strand per window [on]."),
    grad_checkpointing: bool = typer.Option(None, "--grad-checkpointing", help="Recompute blocks in backward."),
    device: str = typer.Option(None, help=f"auto, cpu, cuda [{_PRETRAIN['device']}]."),
    precision: str = typer.Option(None, help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16."),
    seed: int = typer.Option(None, help=f"Seed of data order, strands and init [{_PRETRAIN['seed']}]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    stop_at: int = typer.Option(None, help="Checkpoint and exit 0 after this step (time-boxed jobs)."),
) -> None:
    """Pretrain a Mamba DNA language model and save it in OUT/model.

    --arch mamba trains next-nucleotide prediction; bimamba / caduceus-ph / caduceus-ps train a
    masked LM as Caduceus does (15% of bases chosen; N never a target; --softmask-weight 0.1 is
    PlantCaduceus's weight for lower-case repeats). Validation bits per base are reported
    beside the best k-mer Markov model (clm), or masked bits per base beside the two-sided
    k-mer model at the same masked positions (mlm), on the same held-out regions. SIGTERM/SIGINT/SIGUSR1: checkpoint at the next step, exit 0; rerun the
    same command (or --resume) to continue. Multi-GPU: torchrun --nproc_per_node=N -m mamba_dna pretrain ...
    Prints the run directory on stdout.

    Example:  mamba-dna pretrain ecoli.fna.gz --out runs/ecoli --d-model 128 --n-layer 4 --seq-len 4096 --steps 2000
    Masked:   mamba-dna pretrain genome.fa --arch caduceus-ps --softmask-weight 0.1 --out runs/ps
    """
    from mamba_dna import distributed as mdist
    from mamba_dna.pipelines.pretrain import config_from_cli, run

    cfg = config_from_cli(
        inputs or [], out, config, model_config,
        dict(d_model=d_model, n_layer=n_layer, d_state=d_state),
        dict(arch=arch, objective=objective, mask_prob=mask_prob,
             seq_len=seq_len, seq_len_start=seq_len_start, seq_warmup_steps=seq_warmup_steps,
             steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
             warmup_steps=warmup_steps, weight_decay=weight_decay, split_by=split_by,
             val_fraction=val_fraction, eval_every=eval_every, eval_windows=eval_windows,
             checkpoint_every=checkpoint_every, log_every=log_every, softmask_weight=softmask_weight,
             rc_augment=rc_augment, grad_checkpointing=grad_checkpointing, device=device,
             precision=precision, seed=seed),
    )
    result = run(cfg, resume=resume, stop_at=stop_at)
    if mdist.detect().is_main:
        typer.echo(result.run_dir)


def _emb_layer_text(layer: int | None) -> str:
    """ScoreConfig.emb_layer as the CLI spells it (None = 'final')."""
    return "final" if layer is None else str(layer)


score_app = _command_group("score", "Zero-shot variant effect scores (LLR, DLL, embedding distance; MLM_LLR for masked models) for a VCF (`score merge` joins shards).")


@score_app.callback(invoke_without_command=True)
def score(
    ctx: typer.Context,
    vcf: str = typer.Option(None, "--vcf", "-i", help="Input VCF (plain, .gz or bgzip)."),
    fasta: str = typer.Option(None, "--fasta", "-f", help="Reference FASTA the VCF was called on."),
    model: str = typer.Option(None, "--model", "-m", help="Model directory (MambaLM or Caduceus / PlantCaduceus), hf:ORG/NAME, a baseline .npz, markov:K|auto (causal) or kmer2:K|auto (two-sided k-mer, masked)."),
    out: str = typer.Option(None, "--out", "-o", help="Output .vcf/.vcf.gz (INFO fields) or .tsv; '-' = TSV on stdout."),
    scores: str = typer.Option(",".join(ScoreConfig.scores), "--scores", help="auto = llr,dll for a causal model, mlm for a masked one. Causal: llr (SNVs, nearly free), dll (all alleles), emb (network models: EMB_COS = 1 - cos, EMB_L2 between REF and ALT hidden states mean-pooled over the allele + window/2 bp downstream, mean of both strands). Masked (Caduceus, kmer2): mlm = MLM_LLR (SNVs: the variant masked in a --context window, PlantCaduceus's score), llr = an UNMASKED approximation (the model sees the REF base; cheaper, biased to the REF, not interchangeable with MLM_LLR), emb = REF vs ALT window embedding distance (any allele: indels and MNVs are scored only with emb)."),
    emb_layer: str = typer.Option(_emb_layer_text(ScoreConfig.emb_layer), "--emb-layer", help="emb: 'final' (after the final norm) or K = after K blocks (0 = token embeddings, -1 = last block)."),
    window: int = typer.Option(ScoreConfig.window, "--window", "-w", help="DLL window in bp: window/2 each side."),
    strict: bool = typer.Option(ScoreConfig.strict, "--strict", help="REF mismatch or unknown contig is an error."),
    chrom_alias: str = typer.Option(ScoreConfig.chrom_alias, "--chrom-alias", help="'chr1=1,chrM=MT' or a 2-column file."),
    region: str = typer.Option(ScoreConfig.region, "--region", help="chrom:start-end (1-based, inclusive)."),
    shard: str = typer.Option(ScoreConfig.shard, "--shard", help="i/n (0-based): this array job's records."),
    tsv_info: str = typer.Option(",".join(ScoreConfig.tsv_info), "--tsv-info", help="INFO keys copied into TSV columns, e.g. Y,FITNESS."),
    context: int = typer.Option(ScoreConfig.context, "--context", help="Causal: upstream bp streamed before a contig's first variant (default: whole contig). Masked: the window length (default 512, the variant at 0-based (C-1)//2 = 255, N past contig ends; longer than the model was trained on: a warning)."),
    batch_size: int = typer.Option(ScoreConfig.batch_size, "--batch-size", help="ALT re-runs (masked: windows) per model call (default: ~2M activations per call; 7 for a 2x128 model, 2 kb window)."),
    snapshot_every: int = typer.Option(ScoreConfig.snapshot_every, "--block", help="State snapshot spacing in bp (DLL re-run prefix)."),
    device: str = typer.Option(ScoreConfig.device, "--device", help="auto | cpu | cuda | cuda:K."),
) -> None:
    """Score every ALT allele of a VCF with a model or a Markov baseline (negative = damaging).

    Example:  mamba-dna score --vcf variants.vcf.gz --fasta ref.fa --model runs/m/model --out scored.vcf.gz
    With the embedding distance at the last block: --scores llr,dll,emb --emb-layer -1
    A masked model (MDNA_MLM_LLR / column mlm_llr; indels: status not_snv_masked_model unless
    --scores mlm,emb):  mamba-dna score -i v.vcf -f ref.fa --model hf:kuleshov-group/PlantCaduceus_l20 -o s.tsv
    """
    if ctx.invoked_subcommand is not None:
        return
    from mamba_dna.errors import ConfigError
    from mamba_dna.pipelines.score import merge_outputs, parse_shard, run_score

    missing = [n for n, v in (("--vcf", vcf), ("--fasta", fasta), ("--model", model), ("--out", out)) if not v]
    if missing:
        raise ConfigError(f"score: missing {', '.join(missing)}", hint="see `mamba-dna score --help`")
    from mamba_dna import rankshard

    def make(out_: str, shard_: str | None, device_: str) -> ScoreConfig:
        return ScoreConfig(vcf=vcf, fasta=fasta, model=model, out=out_,
                           scores=tuple(scores.split(",")), emb_layer=emb_layer, window=window, strict=strict,
                           chrom_alias=chrom_alias, region=region, shard=shard_, context=context,
                           batch_size=batch_size, snapshot_every=snapshot_every, device=device_,
                           tsv_info=tuple(k for k in tsv_info.split(",") if k))

    ranks = rankshard.launcher_shard(shard)
    if ranks is None or out == "-":
        run_score(make(out, shard, device))
        if out != "-":
            typer.echo(out)
        return
    # torchrun / srun: rank r scores shard r/world; rank 0 merges the parts into --out.
    base, dev = rankshard.with_token(out), rankshard.rank_device(device)

    def part(i: int, n: int) -> Path:
        return rankshard.part_path(base, i, n)

    done = rankshard.run_ranks(
        out, *ranks,
        run_part=lambda s: run_score(make(str(part(*parse_shard(s))), s, dev)),
        part_path=part, merge=merge_outputs,
    )
    if done:
        typer.echo(done)


@score_app.command("merge")
def score_merge(
    shards: list[str] = typer.Argument(..., help="Outputs of `score --shard i/n` (any order)."),
    out: str = typer.Option(..., "--out", "-o", help="Merged output (same format as the shards)."),
) -> None:
    """Join `score --shard i/n` outputs in input order, identical to a single run.

    Example:  mamba-dna score merge scored.shard*.tsv --out scored.tsv
    """
    from mamba_dna.pipelines.score import merge_outputs

    merge_outputs(shards, out)
    typer.echo(out)


@score_app.command("eval")
def score_eval(
    scored: str = typer.Argument(..., help="A `score` output (.tsv or .vcf[.gz])."),
    truth: str = typer.Option(..., "--truth", help="VCF with the label in INFO."),
    label: str = typer.Option(..., "--label", help="INFO key of the label (e.g. Y, FITNESS)."),
    metric: str = typer.Option("auroc", "--metric", help="auroc (label == --positive) | spearman."),
    column: str = typer.Option("llr", "--score", help="Score column: llr | dll | dll_norm | mlm_llr | emb_cos | emb_l2 (distances: larger = damaging)."),
    positive: str = typer.Option("1", "--positive", help="Label value of the positive class."),
) -> None:
    """Metric of a score against labelled variants (AUROC uses -score, +score for emb distances).

    Example:  mamba-dna score eval scored.tsv --truth brca1_sge.vcf.gz --label Y --metric auroc
    """
    from mamba_dna.pipelines.score import evaluate_labelled

    r = evaluate_labelled(scored, truth, label, metric=metric, score=column, positive=positive)
    typer.echo("\t".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


classify_app = _command_group("classify", "Species (or any label) from genome windows: model embeddings beside a k-mer baseline.")


def _int_list(text: str | None, opt: str) -> tuple[int, ...] | None:
    from mamba_dna.errors import ConfigError

    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{opt} {text!r}: expected comma-separated integers") from None


@classify_app.command("train")
def classify_train(
    labels: str = typer.Option(..., "--labels", help="TSV: 'file' column + label columns."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (classifiers, report)."),
    model: str = typer.Option(None, "--model", "-m", help="Model directory (mamba-dna, Caduceus, PlantCaduceus) or hf:ORG/NAME (none: the k-mer baseline only)."),
    label_column: str = typer.Option(ClassifyConfig.label_column, "--label-column", help="Column holding the label."),
    group: str = typer.Option(None, "--group", help="Keep rows whose 'group' column equals this."),
    include: str = typer.Option(None, "--include", help="Regex on file path or label: keep matches."),
    label_from_record: str = typer.Option(None, "--label-from-record",
                                          help="Regex with one group on record names, e.g. '_(DENV[1-4])$'."),
    window: int = typer.Option(ClassifyConfig.window, "--window", "-w", help="Window length in bp (<= 2^20)."),
    split_by: str = typer.Option(ClassifyConfig.split_by, "--split-by", help="record | block | file (hold out files)."),
    block: int = typer.Option(ClassifyConfig.block, "--block", help="Block size for block/file splits [--window]."),
    per_class: int = typer.Option(ClassifyConfig.per_class, "--per-class", help="Train windows per class (val/test: half)."),
    max_length: int = typer.Option(ClassifyConfig.max_length, "--max-length", help="Longest window in the length table."),
    lengths: str = typer.Option(None, "--lengths", help="Length table windows, e.g. 1024,4096 [2^10 .. 2^20]."),
    pool: str = typer.Option(ClassifyConfig.pool, "--pool", help="mean | last (causal models only) | max."),
    layer: int = typer.Option(None, "--layer", help="Residual stream after K blocks (default: after the final norm)."),
    rc_average: bool = typer.Option(ClassifyConfig.rc_average, "--rc-average/--no-rc-average",
                                    help="Strand-symmetric embeddings (default: on for bidirectional models, free for Caduceus-PS; off for causal ones)."),
    seed: int = typer.Option(ClassifyConfig.seed, "--seed"),
    device: str = typer.Option(ClassifyConfig.device, "--device"),
    kmer_ks: str = typer.Option(None, "--kmer-ks", help="k values the k-mer baseline picks from on val [3,4,5,6]."),
    finetune: bool = typer.Option(False, "--finetune", help="Also fine-tune the backbone end to end (last-token head; mean-pooled for bidirectional models)."),
    steps: int = typer.Option(FinetuneConfig.steps, "--steps", help="--finetune: optimizer steps over all length stages."),
    lr: float = typer.Option(FinetuneConfig.lr, "--lr", help="--finetune: AdamW peak learning rate."),
    batch_size: int = typer.Option(FinetuneConfig.batch_size, "--batch-size", help="--finetune: windows per step."),
    warmup_lengths: str = typer.Option(None, "--warmup-lengths",
                                       help="--finetune: length stages below --window [doubling from 1024]."),
    grad_checkpointing: str = typer.Option(FinetuneConfig.grad_checkpointing, "--grad-checkpointing",
                                           help="--finetune: auto (windows >= 16384) | on | off."),
    finetune_table: bool = typer.Option(FinetuneConfig.table, "--finetune-table/--no-finetune-table",
                                        help="--finetune: also fine-tune at every length-table row."),
    finetune_pool: str = typer.Option(FinetuneConfig.pool, "--finetune-pool",
                                      help="--finetune: last (the paper's head; causal models only) | mean (default: last for causal, mean for bidirectional)."),
) -> None:
    """Train + test a window classifier and the k-mer baseline on the same split; write a report.

    Example:  mamba-dna classify train --labels species/labels.tsv --group bacteria --split-by file --window 4096 --model models/m --out cls/bacteria [--finetune --steps 400 --warmup-lengths 1024,2048]
    """
    from mamba_dna.pipelines.classify import format_report, run_train

    ft = None
    if finetune:
        ft = FinetuneConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                            warmup_lengths=_int_list(warmup_lengths, "--warmup-lengths"),
                            grad_checkpointing=grad_checkpointing, table=finetune_table,
                            pool=finetune_pool)
    cfg = ClassifyConfig(labels=labels, out=out, model=model, label_column=label_column,
                         group=group, include=include, label_from_record=label_from_record,
                         window=window, split_by=split_by, block=block, per_class=per_class,
                         max_length=max_length, lengths=_int_list(lengths, "--lengths"), pool=pool, layer=layer, rc_average=rc_average,
                         seed=seed, device=device, kmer_ks=_int_list(kmer_ks, "--kmer-ks"), finetune=ft)
    typer.echo(format_report(run_train(cfg)))


@classify_app.command("predict")
def classify_predict(
    fasta: list[str] = typer.Argument(..., help="FASTA files to classify."),
    classifier: str = typer.Option(..., "--classifier", "-c", help="OUT/model, OUT/kmer or OUT/finetuned from train."),
    window: int = typer.Option(None, "--window", "-w", help="Window length [the training one]."),
    aggregate: str = typer.Option("mean", "--aggregate", help="Per record: mean probability | majority."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the TSV here."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Classify tiled windows of each record and aggregate per record; prints TSV.

    Example:  mamba-dna classify predict new_genome.fna.gz --classifier cls/bacteria/model --out pred.tsv
    """
    from mamba_dna.pipelines.classify import predict_files, write_predictions

    rows = predict_files(classifier, fasta, window=window, aggregate=aggregate, device=device)
    typer.echo(write_predictions(rows, out), nl=False)


@classify_app.command("evaluate")
def classify_evaluate(
    labels: str = typer.Option(..., "--labels", help="TSV of labelled FASTA files."),
    classifier: str = typer.Option(..., "--classifier", "-c", help="OUT/model, OUT/kmer or OUT/finetuned from train."),
    label_column: str = typer.Option(ClassifyConfig.label_column, "--label-column"),
    group: str = typer.Option(None, "--group"),
    include: str = typer.Option(None, "--include"),
    label_from_record: str = typer.Option(None, "--label-from-record"),
    window: int = typer.Option(None, "--window", "-w"),
    aggregate: str = typer.Option("mean", "--aggregate"),
    out: str = typer.Option(None, "--out", "-o", help="Per-record predictions TSV."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Per-record accuracy of a trained classifier on labelled files (confusion on stdout).

    Example:  mamba-dna classify evaluate --labels new_labels.tsv --classifier cls/bacteria/kmer
    """
    from mamba_dna.pipelines.classify import confusion_text, evaluate, write_predictions

    r = evaluate(classifier, labels, label_column=label_column, group=group, include=include,
                 label_from_record=label_from_record, window=window, aggregate=aggregate,
                 device=device)
    if out:
        write_predictions(r["rows"], out)
    m = r["metrics"]
    typer.echo(f"records {m['n']}  accuracy {m['accuracy']:.3f}  balanced accuracy "
               f"{m['balanced_accuracy']:.3f}")
    typer.echo(confusion_text(m))


@app.command()
def demo(
    out: str = typer.Option(DemoConfig.out, "--out", "-o", help="Output directory (report.md, plots, model)."),
    data: str = typer.Option(None, "--data", help="Data folder [$MAMBA_DNA_DATA, else ../shared/data]."),
    quick: bool = typer.Option(DemoConfig.quick, "--quick", help="Toy-scale run (< 1 min) that checks the plumbing."),
    minutes: float = typer.Option(None, "--minutes", help="Pretraining wall-clock budget [4]."),
    steps: int = typer.Option(None, "--steps", help="Pretraining steps instead of a time budget."),
    device: str = typer.Option(DemoConfig.device, "--device", help="auto | cpu | cuda | cuda:K."),
    model: str = typer.Option(DemoConfig.model, "--model", "-m", help="A model directory or hf:ORG/NAME[@REV] "
                              "(mamba-dna, Caduceus, PlantCaduceus): score / embed / classify with it, no pretraining."),
    mlm: bool = typer.Option(DemoConfig.mlm, "--mlm/--no-mlm", help="Also pretrain a masked Caduceus-PS beside "
                             "the causal model (half its budget) [on]."),
) -> None:
    """The whole system on real genomes in minutes on a CPU: tokenize, pretrain (a causal Mamba
    LM and a masked Caduceus-PS), score, embed, classify, each beside its baseline; writes
    OUT/report.md and prints the headline figures. With --model, a given (e.g. published)
    model is scored, embedded and classified instead of pretraining one.

    Example:  mamba-dna demo --out runs/demo --minutes 4
              mamba-dna demo --out runs/demo_pc --model hf:kuleshov-group/PlantCaduceus_l20
    """
    from mamba_dna.pipelines.demo import format_headline, run_demo

    res = run_demo(DemoConfig(out=out, data=data, quick=quick, minutes=minutes, steps=steps,
                              device=device, model=model, mlm=mlm))
    typer.echo(format_headline(res))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user mistakes become one line and an exit code.

    SIGTERM raises `fsutil.Terminated` so partial outputs are cleaned up (exit 143); Ctrl-C
    prints "interrupted" (exit 130); an OSError (permission, read-only or full disk, ...) is
    one line naming the path, exit 2 (set MAMBA_DNA_DEBUG=1 for its traceback).
    """
    from mamba_dna.fsutil import Terminated, os_error_message, terminate_as_exception

    try:
        with terminate_as_exception():
            rc = app(args=argv, standalone_mode=False)
    except MambaDNAError as e:
        print(f"mamba-dna: error: {e.one_line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("mamba-dna: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("mamba-dna: terminated (SIGTERM)", file=sys.stderr)
        sys.exit(143)
    except OSError as e:
        if os.environ.get("MAMBA_DNA_DEBUG"):
            raise
        print(f"mamba-dna: error: {os_error_message(e, action='access')}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        # Usage errors from the (vendored) click layer: print click's message, exit 2.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            # click turns Ctrl-C into Abort (the KeyboardInterrupt is its __context__)
            if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
                print("mamba-dna: interrupted", file=sys.stderr)
                sys.exit(130)
            print("mamba-dna: aborted", file=sys.stderr)
            sys.exit(1)
        raise
    if rc == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into Exit(130)
        print("mamba-dna: interrupted", file=sys.stderr)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
