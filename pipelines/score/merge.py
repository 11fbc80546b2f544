"""`score merge` (shard outputs -> one output, identical to a single run), reading scored
outputs back, and `score eval` (a score column against labelled variants)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import guard_output, os_errors, output_lock, prepare_output
from mamba_dna.io.vcf import RECORDS_META, TSV_ROWS, TsvWriter, VcfReader, VcfWriter, read_tsv
from mamba_dna.pipelines.score.config import DISTANCE_COLUMNS, out_kind
from mamba_dna.pipelines.score.formats import PROVENANCE_META

SHARD_RE = re.compile(r"shard=(\d+)/(\d+)")  # in the provenance line (formats.provenance)


def merge_outputs(parts: Sequence[str], out: str) -> int:
    """Join shard outputs (all TSV or all VCF) in shard order into `out`; returns rows written."""
    if not parts:
        raise ConfigError("score merge: no shard files given")
    kind = out_kind(parts[0])
    if any(out_kind(p) != kind for p in parts) or out_kind(out) != kind:
        raise ConfigError("score merge: shards and output must all be TSV or all VCF")
    guard_output(out, parts)
    shards = sorted((_read_shard(p, kind) for p in parts), key=lambda s: s["i"])
    ns = {s["n"] for s in shards}
    got = [s["i"] for s in shards]
    if len(ns) != 1 or got != list(range(next(iter(ns)))):
        raise InputError(f"score merge: expected shards 0..n-1 of one run, got {got} of n={sorted(ns)}")
    prepare_output(out)
    with output_lock(out), os_errors(out):
        return _write_merged(shards, kind, out)


def _write_merged(shards: list[dict], kind: str, out: str) -> int:
    first = shards[0]
    merged_prov = SHARD_RE.sub(f"shard=0/1 merged_from={len(shards)}", first["prov"])
    written = 0
    if kind == "tsv":
        header = first["header"]
        for s in shards:
            if s["header"] != header:
                raise InputError(f"{s['path']}: columns {s['header']} differ from the first shard's {header}")
        if tuple(header[:5]) != TsvWriter.KEY_COLUMNS:
            raise InputError(f"{first['path']}: expected the columns {', '.join(TsvWriter.KEY_COLUMNS)} first")
        with TsvWriter(out, header[5:], comment=merged_prov) as w:
            for s in shards:
                for row in s["rows"]:
                    w.write_cells(row)
        return w.n_written
    meta = [m for m in first["meta"] if not m.startswith(PROVENANCE_META)]
    with VcfWriter(out, meta, first["columns"], [], extra_meta=[merged_prov]) as w:
        for s in shards:
            for rec in s["rows"]:
                w.write(rec, {})
                written += 1
    return written


def _read_shard(path: str, kind: str) -> dict:
    """One shard output: its provenance, shard i/n, rows (TSV: header too; VCF: meta, columns)."""
    if kind == "tsv":
        prov, header, rows, declared = read_tsv(path, end=True)
        d = {"prov": prov, "header": header, "rows": rows}
    else:
        rd = VcfReader(path)
        prov = next((m for m in rd.meta if m.startswith(PROVENANCE_META)), "")
        d = {"prov": prov, "rows": list(rd), "meta": rd.meta, "columns": rd.columns}
        count = next((m[len(RECORDS_META):] for m in rd.meta if m.startswith(RECORDS_META)), None)
        declared = int(count) if count is not None and count.isdigit() else None
    mm = SHARD_RE.search(prov)
    if not mm:
        raise InputError(f"{path}: not a mamba-dna score output (no shard=i/n provenance line)")
    _check_complete(path, kind, len(d["rows"]), declared)
    return {**d, "path": path, "i": int(mm.group(1)), "n": int(mm.group(2))}


def _check_complete(path: str, kind: str, got: int, declared: int | None) -> None:
    """Refuse a shard that holds fewer (or more) rows than its writer wrote."""
    what = "records" if kind == "vcf" else "rows"
    if declared is None or (declared == 0 and got):
        mark = f"its {RECORDS_META if kind == 'vcf' else TSV_ROWS}N header line"
        raise InputError(f"{path}: no record of how many {what} it holds ({mark} is missing or "
                         f"unset; {got:,} {what} read): cut off, or not finished",
                         hint="run that shard again")
    if got < declared:
        raise InputError(f"{path}: cut off: holds {got:,} of the {declared:,} {what} its writer wrote "
                         f"({declared - got:,} missing)", hint="run that shard again")
    if got > declared:
        raise InputError(f"{path}: holds {got:,} {what} but its writer wrote {declared:,} (edited or "
                         "appended to?)", hint="run that shard again")


def read_scored(path: str) -> list[dict]:
    """Rows (one per ALT) of a score output, TSV or VCF: chrom, pos, ref, alt, llr, dll, ..."""
    kind = out_kind(path)
    out = []
    if kind == "tsv":
        _, header, rows = read_tsv(path)
        for row in rows:
            out.append(dict(zip(header, row, strict=True)))
        return out
    rd = VcfReader(path)
    keys = [m.split("ID=", 1)[1].split(",", 1)[0] for m in rd.meta if m.startswith("##INFO=<ID=MDNA_")]
    for rec in rd:
        info = rec.info
        per = {k[5:].lower(): [] for k in keys}  # fields absent from a record: missing (".")
        for key, v in info.items():
            if key.startswith("MDNA_") and isinstance(v, str):
                per[key[5:].lower()] = v.split(",")
        for ai, alt in enumerate(rec.alts):
            row = {"chrom": rec.chrom, "pos": str(rec.pos), "ref": rec.ref, "alt": alt}
            for k, vals in per.items():
                row[k] = vals[ai] if ai < len(vals) else "."
            out.append(row)
    return out


def evaluate_labelled(scored: str, truth_vcf: str, label: str, metric: str = "auroc",
                      score: str = "llr", positive: str = "1", threshold: float | None = None) -> dict:
    """Metric of a score column against a label INFO field of the truth VCF.

    metric "auroc": label == `positive` (e.g. Y=1: LOF / pathogenic) is the positive class
    and the predictor is -score (negative score = damaging), or +score for the distances
    (emb_cos, emb_l2: larger = more damaging); `res["predictor"]` says which. metric "spearman": rank
    correlation of the score with a continuous label (e.g. FITNESS); with `threshold`, also
    the AUROC of label < threshold. Variants join on (chrom, pos, ref, alt); missing scores
    are left out and counted.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    ys, ss, missing = _joined(scored, truth_vcf, label, score)
    s = np.array(ss)
    sign = 1.0 if score in DISTANCE_COLUMNS else -1.0  # predictor of "damaging"
    res = {"n": len(ss), "missing_score": missing, "score": score, "label": label, "metric": metric,
           "predictor": f"{'+' if sign > 0 else '-'}{score}"}
    if not ss:
        raise InputError(f"{scored}: no {score!r} values for the variants of {truth_vcf}",
                         hint="was it scored with that score (--scores)?")
    if metric == "auroc":
        y = np.array([str(v) == positive for v in ys])
        if y.all() or not y.any():
            raise InputError(f"{truth_vcf}: label {label} has one class among the scored variants")
        res["value"] = float(roc_auc_score(y, sign * s))
        res["n_pos"] = int(y.sum())
    elif metric == "spearman":
        y = np.array([float(v) for v in ys])
        res["value"] = float(spearmanr(s, y).statistic)
        if threshold is not None:
            yb = y < threshold
            res["auroc_below_threshold"] = float(roc_auc_score(yb, sign * s))
    else:
        raise ConfigError(f"metric {metric!r}: expected auroc or spearman")
    return res


def _joined(scored: str, truth_vcf: str, label: str, score: str) -> tuple[list, list[float], int]:
    """(labels, scores, number of labelled variants without a score) joined on (chrom, pos,
    ref, alt)."""
    truth = {}
    for rec in VcfReader(truth_vcf):
        v = rec.info.get(label)
        if v is None or v is True:
            continue
        for alt in rec.alts:
            truth[(rec.chrom, rec.pos, rec.ref, alt)] = v
    ys, ss = [], []
    missing = 0
    for row in read_scored(scored):
        key = (row["chrom"], int(row["pos"]), row["ref"], row["alt"])
        if key not in truth:
            continue
        v = row.get(score, ".")
        if v in (".", "", None):
            missing += 1
            continue
        ys.append(truth[key])
        ss.append(float(v))
    return ys, ss, missing
