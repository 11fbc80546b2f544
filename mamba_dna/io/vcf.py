"""VCF 4.x reading and writing for variant scoring.

Reading is a small streaming text parser, not pysam: pysam's VariantFile cannot open plain
gzip VCFs ("seek not implemented in files compressed by method 1"; the shared data's VCFs are
all plain gzip), and on a malformed record it raises "truncated file" without saying which
line. Ours reads plain, gzip and BGZF the same way (BGZF is multi-member gzip), keeps the
record's text so output VCFs carry every input field, and names the file and line of any
malformed record. Writing a .vcf.gz uses pysam (BGZF + tabix index); tests check that pysam
reads our output back with its INFO header lines.

Coordinates: VCF POS is 1-based; `VcfRecord.start` is the 0-based start used everywhere else.

Per-ALT results (Number=A): every ALT of a multi-allelic record gets its own value. ALTs
that cannot be scored keep a reason (`alt_skip_reason`): symbolic (<DEL>, <INS:ME>, ...),
star (*, a deletion upstream), missing (.), breakend (t[p[ / ]p]t), invalid (anything not
A/C/G/T/N, e.g. MitoTIP's ':').
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import atomic_path

_ALLELE_RE = re.compile(r"^[ACGTNacgtn]+$")
MISSING = "."


@dataclass
class VcfRecord:
    """One data line. `fields` are the tab-separated columns as read (for writing back)."""

    index: int  # 0-based record number in input order
    line: int  # 1-based line number in the file
    chrom: str
    pos: int  # 1-based VCF POS
    id: str
    ref: str
    alts: tuple[str, ...]
    fields: list[str] = field(repr=False, default_factory=list)

    @property
    def start(self) -> int:
        """0-based start of REF."""
        return self.pos - 1

    @property
    def info(self) -> dict[str, str | bool]:
        return parse_info(self.fields[7] if len(self.fields) > 7 else MISSING)


def parse_info(text: str) -> dict[str, str | bool]:
    """INFO column -> {key: raw value string, or True for flags}."""
    out: dict[str, str | bool] = {}
    if text in ("", MISSING):
        return out
    for item in text.split(";"):
        if not item:
            continue
        k, eq, v = item.partition("=")
        out[k] = v if eq else True
    return out


def alt_skip_reason(alt: str) -> str | None:
    """Why an ALT allele cannot be scored as a sequence change, or None if it can."""
    if alt == "*":
        return "star_allele"
    if alt == MISSING:
        return "missing_alt"
    if alt.startswith("<"):
        return "symbolic_alt"
    if "[" in alt or "]" in alt:
        return "breakend"
    if not _ALLELE_RE.match(alt):
        return "invalid_alt"
    return None


def _open_text(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


class VcfReader:
    """Stream records of a VCF (plain, gzip or BGZF): `for rec in VcfReader(path): ...`.

    `.meta` (the ## lines), `.columns` (the #CHROM line split), `.contigs` ({ID: length or
    None} from ##contig lines) are available right after construction.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such VCF file")
        self._fh = _open_text(self.path)
        self.meta: list[str] = []
        self.columns: list[str] = []
        self.contigs: dict[str, int | None] = {}
        self._line = 0
        self._pending: str | None = None
        self._read_header()

    def _read_header(self) -> None:
        try:
            for raw in self._fh:
                self._line += 1
                line = raw.rstrip("\r\n")
                if self._line == 1 and not line.startswith("##fileformat=VCF"):
                    raise InputError(
                        f"{self.path}:1: expected '##fileformat=VCFv4.x' as the first line, got "
                        f"{line[:40]!r}"
                    )
                if line.startswith("##"):
                    self.meta.append(line)
                    if line.startswith("##contig=<"):
                        self._add_contig(line)
                    continue
                if line.startswith("#CHROM"):
                    self.columns = line[1:].split("\t")
                    if len(self.columns) < 8:
                        raise InputError(
                            f"{self.path}:{self._line}: the #CHROM header has {len(self.columns)} "
                            "tab-separated columns; expected at least 8 (CHROM..INFO)"
                        )
                    return
                raise InputError(
                    f"{self.path}:{self._line}: expected the '#CHROM POS ID REF ALT QUAL FILTER "
                    f"INFO' header line before data, got {line[:40]!r}"
                )
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise InputError(f"{self.path}: unreadable compressed VCF near line {self._line} ({e})") from e
        raise InputError(f"{self.path}: no '#CHROM' header line (empty or truncated VCF)")

    def _add_contig(self, line: str) -> None:
        body = line[len("##contig=<") :].rstrip(">")
        kv = dict(p.partition("=")[::2] for p in body.split(","))
        if "ID" in kv:
            ln = kv.get("length")
            self.contigs[kv["ID"]] = int(ln) if ln and ln.isdigit() else None

    def __iter__(self) -> Iterator[VcfRecord]:
        index = 0
        try:
            for raw in self._fh:
                self._line += 1
                line = raw.rstrip("\r\n")
                if not line or line.startswith("#"):
                    continue
                yield self._parse(line, index)
                index += 1
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise InputError(f"{self.path}: unreadable compressed VCF near line {self._line} ({e})") from e
        finally:
            self._fh.close()

    def _parse(self, line: str, index: int) -> VcfRecord:
        where = f"{self.path}:{self._line}"
        f = line.split("\t")
        if len(f) < 8:
            raise InputError(
                f"{where}: {len(f)} tab-separated columns; expected at least 8 "
                "(CHROM POS ID REF ALT QUAL FILTER INFO)"
            )
        chrom, pos_s, vid, ref, alt = f[0], f[1], f[2], f[3], f[4]
        if not chrom:
            raise InputError(f"{where}: empty CHROM")
        if not pos_s.isdigit() or int(pos_s) < 1:
            raise InputError(f"{where}: POS {pos_s!r} is not a positive integer")
        if not _ALLELE_RE.match(ref):
            raise InputError(f"{where}: REF {ref!r} is not a sequence of A/C/G/T/N")
        if not alt:
            raise InputError(f"{where}: empty ALT (use '.' for none)")
        alts = tuple(alt.split(","))
        if any(a == "" for a in alts):
            raise InputError(f"{where}: ALT {alt!r} has an empty allele")
        return VcfRecord(index, self._line, chrom, int(pos_s), vid, ref.upper(), alts, f)


def count_records(path: str | os.PathLike) -> int:
    """Number of data lines (a fast text scan; used to cut shards)."""
    n = 0
    with _open_text(Path(path)) as fh:
        for line in fh:
            if line and line[0] != "#" and line.strip():
                n += 1
    return n


# ----------------------------------------------------------------------------- contig names


def parse_aliases(spec: str | None) -> dict[str, str]:
    """--chrom-alias: "a=b,c=d" or a file of two columns (VCF name, FASTA name) -> dict."""
    if not spec:
        return {}
    p = Path(spec)
    out: dict[str, str] = {}
    if p.is_file():
        for i, raw in enumerate(p.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) != 2:
                raise InputError(
                    f"{p}:{i}: expected two columns (VCF contig, FASTA record), got {line[:60]!r}"
                )
            out[parts[0]] = parts[1]
        return out
    for item in spec.split(","):
        a, eq, b = item.strip().partition("=")
        if not eq or not a or not b:
            raise ConfigError(
                f"--chrom-alias {spec!r}: {item!r} is not VCF_NAME=FASTA_NAME",
                hint="pass 'chr1=1,chrM=MT' or a two-column file",
            )
        out[a] = b
    return out


class ContigResolver:
    """VCF contig name -> FASTA record name: user aliases, then exact, then chr1/1, chrM/MT."""

    def __init__(self, genome, aliases: dict[str, str] | None = None):
        self.genome = genome
        self.aliases = dict(aliases or {})
        for vcf_name, fasta_name in self.aliases.items():
            if fasta_name not in genome.lengths:
                raise ConfigError(
                    f"--chrom-alias maps {vcf_name!r} to {fasta_name!r}, which is not a record of "
                    f"{genome.path} (records: {', '.join(genome.names[:8])})"
                )
        self._cache: dict[str, str | None] = {}

    def __call__(self, name: str) -> str | None:
        if name in self._cache:
            return self._cache[name]
        hit = self.aliases.get(name)
        if hit is None:
            try:
                hit = self.genome.resolve(name)
            except InputError:
                hit = None
        self._cache[name] = hit
        return hit

    def missing_message(self, name: str, where: str) -> str:
        shown = ", ".join(self.genome.names[:8]) + (" ..." if len(self.genome.names) > 8 else "")
        return (
            f"{where}: VCF contig {name!r} is not in the reference {self.genome.path} "
            f"(records: {shown}); map it with --chrom-alias {name}=RECORD"
        )


def check_contig_lengths(reader: VcfReader, resolve: ContigResolver, *, strict: bool = False) -> list[str]:
    """Compare the header's ##contig lengths with the reference; returns the disagreements.

    A disagreement means the VCF was probably called on another assembly: an InputError
    under --strict, otherwise one warning line with the count and the first few.
    """
    bad = []
    for cid, ln in reader.contigs.items():
        name = resolve(cid) if ln is not None else None
        if name is not None and resolve.genome.lengths[name] != ln:
            bad.append(f"{cid} {ln:,} vs {name} {resolve.genome.lengths[name]:,} bp")
    if bad:
        shown = "; ".join(bad[:3]) + (f"; ... ({len(bad)} in all)" if len(bad) > 3 else "")
        msg = (f"{reader.path}: {len(bad)} ##contig length(s) disagree with the reference "
               f"{resolve.genome.path} ({shown}); was the VCF called on another assembly?")
        if strict:
            raise InputError(msg)
        from mamba_dna import log

        log.info("warning: " + msg + " (--strict makes this an error)")
    return bad


def declared_info(reader: VcfReader) -> set[str]:
    """INFO IDs declared by the header's ##INFO lines."""
    return {m.group(1) for line in reader.meta if (m := re.match(r"##INFO=<ID=([^,>]+)", line))}


def check_info_keys(reader: VcfReader, keys: Sequence[str], opt: str = "--tsv-info") -> None:
    """Refuse INFO keys the header does not declare (a typo would fill a column with '.').

    A header that declares no INFO at all cannot tell; then it is one warning line.
    """
    declared = declared_info(reader)
    missing = [k for k in keys if k not in declared]
    if not missing:
        return
    if not declared:
        from mamba_dna import log

        log.info(f"warning: {opt} {','.join(missing)}: {reader.path} declares no ##INFO fields; "
                 "records without the key get '.'")
        return
    raise ConfigError(
        f"{opt} {','.join(missing)}: not declared in the header of {reader.path}",
        hint=f"declared INFO keys: {', '.join(sorted(declared)[:20])}")


# ----------------------------------------------------------------------------- writing


@dataclass
class InfoField:
    id: str
    number: str  # "A", "1", "0", "."
    type: str  # Float, Integer, String, Flag
    description: str

    def header_line(self) -> str:
        desc = self.description.replace('"', "'")
        return f'##INFO=<ID={self.id},Number={self.number},Type={self.type},Description="{desc}">'


def _fmt(v) -> str:
    if v is None:
        return MISSING
    if isinstance(v, float):
        if v != v:  # NaN
            return MISSING
        return f"{v:.5g}"
    return str(v)


class VcfWriter:
    """Write records with extra INFO fields; `.vcf.gz`/`.vcf.bgz` -> BGZF + tabix index.

    Use as a context manager: the output appears (atomically) only when the block succeeds.
    """

    def __init__(self, dest: str | os.PathLike, meta: Sequence[str], columns: Sequence[str],
                 infos: Sequence[InfoField], extra_meta: Sequence[str] = ()):
        self.dest = Path(dest)
        self.compressed = self.dest.name.endswith((".gz", ".bgz"))
        self.infos = list(infos)
        ours = {i.id for i in self.infos}
        kept = [m for m in meta if not any(m.startswith(f"##INFO=<ID={k},") for k in ours)]
        self._header = kept + [i.header_line() for i in self.infos] + list(extra_meta)
        self._header.append("#" + "\t".join(columns))
        self._ours = ours
        self.n_written = 0

    def __enter__(self) -> VcfWriter:
        self._ctx = atomic_path(self.dest)
        self._tmp = self._ctx.__enter__()
        self._plain = self._tmp.with_name(self._tmp.name + ".plain") if self.compressed else self._tmp
        self._fh = open(self._plain, "w", encoding="utf-8")
        self._fh.write("\n".join(self._header) + "\n")
        return self

    def write(self, rec: VcfRecord, values: dict[str, Sequence]) -> None:
        """values: INFO id -> one value per ALT (Number=A) or a scalar."""
        f = list(rec.fields)
        while len(f) < 8:
            f.append(MISSING)
        items = [
            it for it in (f[7].split(";") if f[7] not in ("", MISSING) else [])
            if it.partition("=")[0] not in self._ours
        ]
        for k, v in values.items():
            if isinstance(v, (list, tuple)):
                if all(x is None or (isinstance(x, float) and x != x) for x in v):
                    continue
                items.append(f"{k}={','.join(_fmt(x) for x in v)}")
            elif v is True:
                items.append(k)
            elif v is not None and v is not False:
                items.append(f"{k}={_fmt(v)}")
        f[7] = ";".join(items) if items else MISSING
        self._fh.write("\t".join(f) + "\n")
        self.n_written += 1

    def __exit__(self, et, ev, tb) -> None:
        self._fh.close()
        if et is not None:
            if self.compressed:
                self._plain.unlink(missing_ok=True)
            self._ctx.__exit__(et, ev, tb)
            return
        tbi_tmp = None
        if self.compressed:
            import pysam

            pysam.tabix_compress(str(self._plain), str(self._tmp), force=True)
            self._plain.unlink(missing_ok=True)
            try:
                pysam.tabix_index(str(self._tmp), preset="vcf", force=True, keep_original=True)
                tbi_tmp = Path(str(self._tmp) + ".tbi")
            except (OSError, ValueError) as e:  # unsorted input: keep the BGZF without index
                from mamba_dna import log

                log.info(f"{self.dest}: not indexed with tabix ({e}); sort the input VCF to get a .tbi")
        self._ctx.__exit__(None, None, None)
        tbi_dest = Path(str(self.dest) + ".tbi")
        if tbi_tmp is not None and tbi_tmp.exists():
            os.replace(tbi_tmp, tbi_dest)
        elif self.compressed:
            tbi_dest.unlink(missing_ok=True)  # a stale index would not match the new file


class TsvWriter:
    """One row per ALT, input order: chrom pos id ref alt <columns...>; atomic.

    The first line is a '#'-comment with provenance (pandas: `comment="#"`); '-' = stdout.
    """

    KEY_COLUMNS = ("chrom", "pos", "id", "ref", "alt")

    def __init__(self, dest: str | os.PathLike, columns: Sequence[str], comment: str = ""):
        self.dest = str(dest)
        self.columns = [*self.KEY_COLUMNS, *columns]
        self.comment = comment
        self.n_written = 0

    def __enter__(self) -> TsvWriter:
        import sys

        if self.dest == "-":
            self._ctx = None
            self._fh = sys.stdout
        else:
            self._ctx = atomic_path(self.dest)
            tmp = self._ctx.__enter__()
            opener = gzip.open if self.dest.endswith(".gz") else open
            self._fh = opener(tmp, "wt", encoding="utf-8")
        if self.comment:
            self._fh.write(f"#{self.comment}\n")
        self._fh.write("\t".join(self.columns) + "\n")
        return self

    def write_row(self, rec: VcfRecord, alt: str, values: Sequence) -> None:
        self.write_cells([rec.chrom, str(rec.pos), rec.id, rec.ref, alt,
                          *(_fmt(v) if v != "" else "" for v in values)])

    def write_cells(self, cells: Sequence[str]) -> None:
        """One row of already formatted cells (all columns, e.g. a row of another output)."""
        self._fh.write("\t".join(cells) + "\n")
        self.n_written += 1

    def __exit__(self, et, ev, tb) -> None:
        if self._ctx is None:
            self._fh.flush()
            return
        self._fh.close()
        self._ctx.__exit__(et, ev, tb)


def read_tsv(path: str | os.PathLike) -> tuple[str, list[str], list[list[str]]]:
    """(comment line without '#', header columns, rows) of a TsvWriter output."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such TSV file")
    opener = gzip.open if p.name.endswith(".gz") else open
    comment, header, rows = "", [], []
    with opener(p, "rt", encoding="utf-8") as fh:
        for i, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            if line.startswith("#"):
                comment = line[1:] if not comment else comment
                continue
            if not header:
                header = line.split("\t")
                continue
            row = line.split("\t")
            if len(row) != len(header):
                raise InputError(f"{p}:{i}: {len(row)} columns, the header has {len(header)}")
            rows.append(row)
    if not header:
        raise InputError(f"{p}: empty TSV (no header line)")
    return comment, header, rows
