"""The output of `score`: the input VCF with INFO fields, or one TSV row per ALT."""

from __future__ import annotations

from mamba_dna import __version__
from mamba_dna.io.vcf import InfoField, TsvWriter, VcfRecord, VcfWriter
from mamba_dna.mlm import PLANTCADUCEUS_CONTEXT, window_centre
from mamba_dna.pipelines.score.config import SCORE_COLUMNS, SCORES, ScoreConfig, out_kind
from mamba_dna.rankshard import parse_shard

PROVENANCE_META = "##mamba-dna_score="  # the VCF header line holding the provenance


def score_columns(cfg: ScoreConfig) -> list[str]:
    """Output columns of the scores asked for, in the fixed order llr, dll, dll_norm, emb_*."""
    return [c for sc in SCORES if sc in cfg.scores for c in SCORE_COLUMNS[sc]]


def info_fields(cfg: ScoreConfig, masked: bool = False) -> dict[str, InfoField]:
    """Column -> its VCF INFO field (with `cfg.info_prefix`), 'status' included.

    `masked`: the descriptions of a masked model's scores (MLM_LLR; LLR is then the unmasked
    approximation; EMB pools whole windows)."""
    p = cfg.info_prefix
    layer = "final norm" if cfg.emb_layer is None else f"layer {cfg.emb_layer}"
    pool = f"allele + {cfg.window // 2} bases downstream"
    if masked:
        ctx = cfg.context or PLANTCADUCEUS_CONTEXT
        where = f"a {ctx} bp window with the SNV at 0-based {window_centre(ctx)}, N past contig ends"
        return {
            "mlm_llr": InfoField(p + "MLM_LLR", "A", "Float", f"mamba-dna: masked-model log p(ALT) - log p(REF), softmax over ACGT, the SNV masked in {where} (negative = ALT less likely)"),
            "llr": InfoField(p + "LLR", "A", "Float", f"mamba-dna: UNMASKED approximation of MLM_LLR (the model sees the REF base it scores), log p(ALT) - log p(REF) over ACGT, windows of {ctx} bp"),
            "emb_cos": InfoField(p + "EMB_COS", "A", "Float", f"mamba-dna: 1 - cosine similarity of the REF and ALT windows' strand-symmetric hidden states at the {layer}, mean-pooled over {ctx} bp windows (larger = more different)"),
            "emb_l2": InfoField(p + "EMB_L2", "A", "Float", f"mamba-dna: L2 distance between the REF and ALT windows' strand-symmetric hidden states at the {layer}, mean-pooled over {ctx} bp windows (larger = more different)"),
            "status": InfoField(p + "STATUS", "A", "String", "mamba-dna: ok, edge (window padded with N past a contig end) or why the ALT was not scored"),
        }
    return {
        "llr": InfoField(p + "LLR", "A", "Float", "mamba-dna: log P(ALT) - log P(REF) at the SNV given its context, mean of both strands (negative = ALT less likely)"),
        "dll": InfoField(p + "DLL", "A", "Float", f"mamba-dna: ALT minus REF log-likelihood of allele + {cfg.window // 2} bases downstream, mean of both strands"),
        "dll_norm": InfoField(p + "DLL_NORM", "A", "Float", "mamba-dna: ALT minus REF mean log-likelihood per scored base (allele-length normalised DLL)"),
        "emb_cos": InfoField(p + "EMB_COS", "A", "Float", f"mamba-dna: 1 - cosine similarity of the REF and ALT hidden states at the {layer}, each mean-pooled over the {pool}, mean of both strands (larger = more different)"),
        "emb_l2": InfoField(p + "EMB_L2", "A", "Float", f"mamba-dna: L2 distance between the REF and ALT hidden states at the {layer}, each mean-pooled over the {pool}, mean of both strands (larger = more different)"),
        "status": InfoField(p + "STATUS", "A", "String", "mamba-dna: ok, edge (context cut by a contig end) or why the ALT was not scored"),
    }


def provenance(cfg: ScoreConfig, scorer) -> str:
    """One line naming the run (`score merge` reads `shard=i/n` back from it)."""
    shard_i, shard_n = parse_shard(cfg.shard)
    return (f"mamba-dna {__version__} score model={cfg.model} scorer={getattr(scorer, 'name', '?')} "
            + (f"window={cfg.window}" if getattr(scorer, "is_causal", True) is not False
               else f"masked context={cfg.context or PLANTCADUCEUS_CONTEXT} scores={','.join(cfg.scores)}")
            + f" shard={shard_i}/{shard_n} region={cfg.region or 'all'}"
            + (f" emb_layer={'final' if cfg.emb_layer is None else cfg.emb_layer}" if "emb" in cfg.scores else ""))


class ScoredWriter:
    """`with ScoredWriter(cfg, reader, scorer) as w: w.write(rec, per_alt)`; atomic (the
    output appears only when the block succeeds). per_alt: one dict per ALT, column -> value."""

    def __init__(self, cfg: ScoreConfig, reader, scorer):
        self.cfg, self.cols = cfg, score_columns(cfg)
        self.infos = info_fields(cfg, masked=getattr(scorer, "is_causal", True) is False)
        self.kind = out_kind(cfg.out)
        prov = provenance(cfg, scorer)
        if self.kind == "vcf":
            fields = [self.infos[c] for c in [*self.cols, "status"]]
            self._w = VcfWriter(cfg.out, reader.meta, reader.columns, fields, extra_meta=[PROVENANCE_META + prov])
        else:
            self._w = TsvWriter(cfg.out, [*self.cols, "status", *[k.lower() for k in cfg.tsv_info]], comment=prov)

    def __enter__(self) -> ScoredWriter:
        self._w.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._w.__exit__(*exc)

    def write(self, rec: VcfRecord, per_alt: list[dict]) -> None:
        if self.kind == "vcf":
            self._w.write(rec, {self.infos[c].id: [r[c] for r in per_alt] for c in [*self.cols, "status"]})
            return
        tsv_info = self.cfg.tsv_info
        inf = rec.info if tsv_info else {}
        for alt, r in zip(rec.alts, per_alt, strict=True):
            extra = [inf.get(k, ".") if inf.get(k) is not True else "1" for k in tsv_info]
            self._w.write_row(rec, alt, [*(r[c] for c in self.cols), r["status"], *extra])
