#!/usr/bin/env python3
"""Download the public data behind ../shared/data from its sources, and check it.

    python data/fetch.py verify [DIR]       offline: check every file in DIR against
                                            data/shared_data.tsv (default ../shared/data)
    python data/fetch.py fetch DIR [--only SUBSTRING]
                                            download from the original sources (GitHub at a
                                            fixed commit; Debian packages by exact version via
                                            snapshot.debian.org), re-derive, write DIR, verify
    python data/fetch.py manifest DIR       (maintainers) rewrite data/shared_data.tsv from DIR

Standard library only (urllib, tarfile, lzma, gzip): it runs before the package is installed.

Two checksums per file, both in data/shared_data.tsv:
  sha256          the file's bytes, as in the shared copy
  content_sha256  FASTA: sha256 of the record sequences (case kept, joined by '\\n', headers
                  and line breaks ignored); other files: sha256 of the decompressed bytes.
Re-fetched files are checked by content_sha256: gzip output and rewritten headers differ
from machine to machine, the sequences must not. Files marked `derived` in SOURCES were made
by a conversion script that is not reproduced here (see ../shared/data/PROVENANCE.md);
`fetch` skips them with a note, and `verify` still checks them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import sys
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "shared_data.tsv"

NEXTCLADE = ("nextstrain/nextclade_data", "6d13d58336ece5d92c6e90e51902f0a2d293f514")
EVO2 = ("ArcInstitute/evo2", "53f195997257c56c00e5ef8d33a54f5baad143a6")
MITY = ("KCCG/mity", "1e012dc0dd323d26b630a13bd7559a1802672dd8")
NUCTRANS = ("Shujun-He/Nucleic-Transformer", "2c020793335417111442684770009bbdf13a885c")


def gh(repo_commit: tuple[str, str], path: str, **kw) -> dict:
    return {"kind": "github", "repo": repo_commit[0], "commit": repo_commit[1], "path": path, **kw}


def deb(package: str, version: str, member: str, **kw) -> dict:
    return {"kind": "debian", "package": package, "version": version, "member": member, **kw}


def _nc(sub: str) -> dict:
    return gh(NEXTCLADE, f"data/nextstrain/{sub}")


RAGOUT = "usr/share/doc/ragout/examples"
# destination (relative to the data folder) -> where it comes from and how it was derived.
# transform: none | window:<record>:<start1>-<end1> | head:<n records> | revcomp | genbank
SOURCES: dict[str, dict] = {
    **{
        f"species/bacteria/Escherichia_coli__{s}.fna.gz": deb(
            "ragout-examples", "2.3-4", f"{RAGOUT}/E.Coli/references/{s}.fasta.gz")
        for s in ("DH1", "MG1655-K12")
    },
    **{
        f"species/bacteria/Helicobacter_pylori__{s}.fna.gz": deb(
            "ragout-examples", "2.3-4", f"{RAGOUT}/H.Pylori/references/{s}.fasta.gz")
        for s in ("ELS37", "G27", "Gambia94_24", "Puno120", "SJM180")
    },
    "species/phage/Enterobacteria_phage_lambda__NC_001416.fna.gz": deb(
        "bowtie2-examples", "2.5.0-3", "usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz"),
    "species/phage/NC_001422_1.fna.gz": gh(EVO2, "phage_gen/data/NC_001422_1.fna"),
    "species/phage/rokyta2006_phix174like_genomes.fna.gz": gh(
        EVO2, "phage_gen/data/rokyta2006_phix174like_genomes.fasta"),
    "species/virus/sars-cov-2_wuhan-hu-1_orfs_reference.fna.gz": _nc("sars-cov-2/wuhan-hu-1/orfs/reference.fasta"),
    "species/virus/dengue_all_sequences.fna.gz": _nc("dengue/all/sequences.fasta"),
    "species/virus/dengue_all_reference.fna.gz": _nc("dengue/all/reference.fasta"),
    "species/virus/mpox_clade-i_reference.fna.gz": _nc("mpox/clade-i/reference.fasta"),
    "species/virus/mpox_clade-i_sequences.fna.gz": _nc("mpox/clade-i/sequences.fasta"),
    "species/virus/mpox_clade-iib_reference.fna.gz": _nc("mpox/clade-iib/reference.fasta"),
    "species/virus/mpox_clade-iib_sequences.fna.gz": _nc("mpox/clade-iib/sequences.fasta"),
    "species/virus/orthoebolavirus_ebov_reference.fna.gz": _nc("orthoebolavirus/ebov/reference.fasta"),
    "species/virus/orthoebolavirus_bdbv_reference.fna.gz": _nc("orthoebolavirus/bdbv/reference.fasta"),
    "species/virus/orthoebolavirus_sudv_reference.fna.gz": _nc("orthoebolavirus/sudv/reference.fasta"),
    "species/virus/measles_genome_WHO-2012_reference.fna.gz": _nc("measles/genome/WHO-2012/reference.fasta"),
    "species/virus/mumps_genome_reference.fna.gz": _nc("mumps/genome/reference.fasta"),
    "species/virus/rubella_genome_reference.fna.gz": _nc("rubella/genome/reference.fasta"),
    "species/virus/hmpv_all-clades_NC_039199_reference.fna.gz": _nc("hmpv/all-clades/NC_039199/reference.fasta"),
    "species/virus/hmpv_all-clades_NC_039199_sequences.fna.gz": _nc("hmpv/all-clades/NC_039199/sequences.fasta"),
    "species/virus/wnv_all-lineages_reference.fna.gz": _nc("wnv/all-lineages/reference.fasta"),
    "species/virus/herpes_vzv_NC_001348_reference.fna.gz": _nc("herpes/vzv/NC_001348/reference.fasta"),
    "species/mito/hs37d5.MT.fna.gz": gh(MITY, "mitylib/reference/hs37d5.MT.fa"),
    "species/mito/mm10.chrM.fna.gz": gh(MITY, "mitylib/reference/mm10.chrM.fa"),
    "species/mito/Pan_troglodytes_chimp_MT.fna.gz": gh(
        ("Sagui-omics/AAAGs_2018", "9b5db54e60a1e17fff08d3cb7c4ea9ba6e710715"),
        "Session2_ReadAlignment_VariantCalling/reference/chimp_MT.fasta"),
    "species/labels.tsv": {"kind": "derived", "note": "labels written with the species/ files"},
    "pretrain/human_chr20_GRCh37_31000000-33000000.fa.gz": deb(
        "vt-examples", "0.57721+ds-3", "usr/share/doc/vt/examples/ref/20.fa.gz",
        transform="window:20:31000000-33000000"),
    "pretrain/dm3_upstream2000_first7000.fa.gz": deb(
        "r-bioc-biostrings", "2.66.0-1",
        "usr/lib/R/site-library/Biostrings/extdata/dm3_upstream2000.fa.gz", arch="amd64",
        transform="head:7000"),
    "variants/sarscov2_ntfitness/MN908947_wuhan-hu-1.fasta": gh(
        ("jbloomlab/SARS2-mut-fitness", "e03a31824464d344965508f5450ff55974fd3ff0"),
        "data/reference.gb", transform="genbank"),
    "variants/sarscov2_ntfitness/ntmut_fitness.vcf.gz": {
        "kind": "derived", "note": "results/nt_fitness/nt_fitness.csv of jbloomlab/SARS2-mut-fitness converted to VCF"},
    "variants/human_mt_mitomap/rCRS_MT.fasta": gh(MITY, "mitylib/reference/hs37d5.MT.fa"),
    **{
        f"variants/human_mt_mitomap/{v}.vcf.gz": gh(MITY, f"mitylib/annot_mt/{v}.vcf.gz")
        for v in ("mitomap_confirmed_mutations", "mitomap_polymorphisms", "mitomap_disease",
                  "mitotip_scores", "mgrb_variants")
    },
    "variants/human_mt_mitomap/mt_labeled_pathogenic_vs_common.vcf.gz": {
        "kind": "derived", "note": "from the two MITOMAP VCFs (pathogenic vs AF >= 1%)"},
    "variants/brca1_sge_findlay2018/BRCA1_region_GRCh38.fasta.gz": gh(
        ("vmizg/inf4_proj_main", "442e0a66497b1bac81f1e7ab6b7dff93cb12d215"),
        "seq/chr17_brca1_ext.txt", transform="revcomp"),
    "variants/brca1_sge_findlay2018/41586_2018_461_MOESM3_ESM.xlsx": gh(
        EVO2, "notebooks/brca1/41586_2018_461_MOESM3_ESM.xlsx"),
    "variants/brca1_sge_findlay2018/brca1_sge.vcf.gz": {
        "kind": "derived", "note": "from the xlsx + region FASTA (hg19 -> hg38 +1,847,983)"},
    "variants/saureus_rn4220_vs_nctc8325/NC_007795_NCTC8325.fasta.gz": deb(
        "sibelia-examples", "3.0.7+dfsg-3",
        "usr/share/doc/sibelia/examples/C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz"),
    "variants/saureus_rn4220_vs_nctc8325/RN4220_vs_NCTC8325.cSibelia.vcf.gz": {
        "kind": "derived", "note": "variant.vcf.gz of sibelia-examples with the contig renamed"},
    "benchmarks/ecoli_promoters_v9d3.csv.gz": gh(NUCTRANS, "src/Ecoli_Promoter_classification/v9d3.csv"),
    "benchmarks/human_enhancers_iEnhancer.csv.gz": gh(
        NUCTRANS, "src/Enchancer_classification/bert_enhancer_dataset.csv"),
}

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")


# ----------------------------------------------------------------------------- checksums


def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def fasta_records(text: bytes) -> list[tuple[bytes, bytes]]:
    """(header, sequence) pairs; line breaks and surrounding whitespace removed."""
    out = []
    for chunk in text.replace(b"\r\n", b"\n").split(b"\n>"):
        chunk = chunk[1:] if chunk.startswith(b">") else chunk
        if not chunk.strip():
            continue
        head, _, body = chunk.partition(b"\n")
        out.append((head, b"".join(body.split())))
    return out


def content_sha256(path: Path) -> str:
    data = _open_bytes(path)
    if path.name.endswith(FASTA_SUFFIXES):
        data = b"\n".join(seq for _, seq in fasta_records(data))
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest() -> dict[str, dict]:
    rows = {}
    lines = MANIFEST.read_text().splitlines()
    cols = lines[0].split("\t")
    for line in lines[1:]:
        d = dict(zip(cols, line.split("\t"), strict=True))
        rows[d["path"]] = d
    return rows


def verify(data: Path, only: str | None = None, content_only: bool = False) -> int:
    bad = 0
    for rel, row in read_manifest().items():
        if only and only not in rel:
            continue
        p = data / rel
        if not p.exists():
            print(f"MISSING  {rel}")
            bad += 1
            continue
        same_file = file_sha256(p) == row["sha256"]
        same_content = content_sha256(p) == row["content_sha256"]
        ok = same_content if content_only else same_file or same_content
        state = "ok" if same_file else ("ok (content)" if same_content else "CHANGED")
        print(f"{state:<13}{rel}")
        bad += not ok
    print(f"{'all files match' if not bad else f'{bad} file(s) missing or changed'} ({MANIFEST.name})")
    return 1 if bad else 0


def write_manifest(data: Path) -> None:
    rows = ["path\tsize\tsha256\tcontent_sha256\tsource"]
    for rel, src in SOURCES.items():
        p = data / rel
        where = {k: v for k, v in src.items() if k != "kind"}
        rows.append(f"{rel}\t{p.stat().st_size}\t{file_sha256(p)}\t{content_sha256(p)}\t"
                    f"{src['kind']}:{json.dumps(where, sort_keys=True)}")
    MANIFEST.write_text("\n".join(rows) + "\n")
    print(f"wrote {MANIFEST} ({len(rows) - 1} files)")


# ----------------------------------------------------------------------------- fetching


def download(url: str) -> bytes:
    print(f"  GET {url}", file=sys.stderr)
    req = urllib.request.Request(url, headers={"User-Agent": "mamba-dna-data-fetch"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def deb_member(package: str, version: str, member: str, arch: str | None, cache: dict) -> bytes:
    """One file out of a Debian binary package of an exact version (snapshot.debian.org)."""
    key = (package, version)
    if key not in cache:
        info = json.loads(download(f"https://snapshot.debian.org/mr/binary/{package}/{version}/binfiles"))
        files = [f for f in info["result"] if arch is None or f["architecture"] in (arch, "all")]
        if not files:
            raise RuntimeError(f"{package} {version}: no .deb for architecture {arch} on snapshot.debian.org")
        cache[key] = download(f"https://snapshot.debian.org/file/{files[0]['hash']}")
    blob = cache[key]
    if not blob.startswith(b"!<arch>\n"):
        raise RuntimeError(f"{package} {version}: not a .deb (ar) archive")
    pos = 8
    while pos < len(blob):  # ar members: 60-byte header, data padded to even length
        name = blob[pos : pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48 : pos + 58])
        body = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise RuntimeError(f"{package}: data.tar.zst needs zstd: run `dpkg-deb -x` instead")
            raw = lzma.decompress(body) if name.endswith(".xz") else (
                gzip.decompress(body) if name.endswith(".gz") else body)
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                for m in tar.getmembers():
                    if m.name.lstrip("./") == member:
                        return tar.extractfile(m).read()
            raise RuntimeError(f"{package} {version}: no {member} in the package")
    raise RuntimeError(f"{package} {version}: no data.tar member")


def revcomp(seq: bytes) -> bytes:
    return seq.translate(bytes.maketrans(b"ACGTNacgtn", b"TGCANtgcan"))[::-1]


def wrap(header: bytes, seq: bytes, width: int = 80) -> bytes:
    return b">" + header + b"\n" + b"".join(seq[i : i + width] + b"\n" for i in range(0, len(seq), width))


def derive(raw: bytes, transform: str) -> bytes:
    """Apply a SOURCES transform to the downloaded bytes; returns FASTA (or the input) bytes."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if transform in ("", "none"):
        return raw
    if transform.startswith("window:"):
        _, rec, span = transform.split(":")
        a, b = (int(x) for x in span.split("-"))
        seq = dict((h.split()[0], s) for h, s in fasta_records(raw))[rec.encode()]
        return wrap(f"{rec}:{a}-{b} (1-based inclusive)".encode(), seq[a - 1 : b])
    if transform.startswith("head:"):
        n = int(transform.split(":")[1])
        recs = raw.split(b"\n>")
        return b"\n>".join(recs[:n]).rstrip(b"\n") + b"\n"
    if transform == "revcomp":
        recs = fasta_records(raw) if raw.lstrip().startswith(b">") else [(b"seq", b"".join(raw.split()))]
        return b"".join(wrap(h + b" reverse-complemented", revcomp(s)) for h, s in recs)
    if transform == "genbank":  # the ORIGIN section of a GenBank flat file
        text = raw.decode()
        acc = text.split("ACCESSION", 1)[1].split()[0]
        origin = text.split("\nORIGIN", 1)[1].split("\n//", 1)[0]
        seq = "".join(ch for ch in origin if ch.isalpha()).upper()
        return wrap(acc.encode(), seq.encode())
    raise ValueError(f"unknown transform {transform!r}")


def fetch(data: Path, only: str | None) -> int:
    want = read_manifest()
    debs: dict = {}
    failed = 0
    for rel, src in SOURCES.items():
        if only and only not in rel:
            continue
        if src["kind"] == "derived":
            print(f"skipped  {rel}: derived ({src['note']}); see PROVENANCE.md")
            continue
        try:
            if src["kind"] == "github":
                raw = download(f"https://raw.githubusercontent.com/{src['repo']}/{src['commit']}/{src['path']}")
            else:
                raw = deb_member(src["package"], src["version"], src["member"], src.get("arch"), debs)
            body = derive(raw, src.get("transform", ""))
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"FAILED   {rel}: {e}")
            failed += 1
            continue
        dest = data / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(gzip.compress(body, mtime=0) if rel.endswith(".gz") else body)
        got = content_sha256(tmp)
        if got != want[rel]["content_sha256"]:
            print(f"MISMATCH {rel}: content sha256 {got} != {want[rel]['content_sha256']} (kept as {tmp})")
            failed += 1
            continue
        tmp.replace(dest)
        print(f"ok       {rel}")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fetch and verify mamba-dna's shared data.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    default = HERE.parent.parent / "shared" / "data"
    v = sub.add_parser("verify")
    v.add_argument("dir", nargs="?", type=Path, default=default)
    v.add_argument("--only")
    f = sub.add_parser("fetch")
    f.add_argument("dir", type=Path)
    f.add_argument("--only")
    m = sub.add_parser("manifest")
    m.add_argument("dir", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "verify":
        return verify(a.dir, a.only)
    if a.cmd == "fetch":
        return fetch(a.dir, a.only)
    write_manifest(a.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
