"""FASTA access, genome windows and deterministic train/val/test splits.

`Genome(path)` opens a FASTA for indexed random access:

* plain FASTA: a samtools-compatible `.fai` is built once (vectorised scan, validated: empty
  file, not a FASTA, records with no sequence, duplicate names) and the sequence is read by
  byte offsets from a memory map, newlines removed with `bytes.translate` (no per-line
  Python). The `.fai` goes beside the file, or into the cache when that directory is not
  writable (e.g. the read-only ../shared/data).
* BGZF (`bgzip`): read directly through pyfaidx (it builds `.fai` + `.gzi`, in the cache if
  the directory is not writable).
* plain gzip cannot be indexed: it is decompressed once into the cache (one log line) and
  opened as a plain FASTA.
* Windows (CRLF) line endings are read as they are (the `.fai` line width counts the CR).
  Mixed line widths or mixed line endings cannot be described by a `.fai`: a normalised copy
  (one line per record) is written to the cache, with one log line, and used instead.

Indexes and caches are built under a file lock and renamed into place when complete, so
several data-loader workers or ranks opening the same file never see a half-written index.

The cache directory is $MAMBA_DNA_CACHE, else ~/.cache/mamba-dna. Cached files are keyed by
the source's absolute path, size and modification time.

Coordinates are 0-based, half-open everywhere.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import mmap
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mamba_dna import log
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import atomic_path
from mamba_dna.tokenizer import N, encode_bytes, reverse_complement

__all__ = [
    "FaiRecord",
    "Genome",
    "GenomeWindows",
    "Region",
    "Window",
    "bed_strand",
    "cache_dir",
    "fai_mismatch",
    "parse_region",
    "read_bed",
    "split_of",
]

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
_SCAN_CHUNK = 1 << 26  # bytes per block when scanning for newlines (bounds temporary memory)
_TOKEN_CHUNK = 1 << 18  # bases per piece when encoding a long range (cache-sized temporaries)


# ----------------------------------------------------------------------------- cache, locks


def cache_dir() -> Path:
    """$MAMBA_DNA_CACHE, else ~/.cache/mamba-dna (created on first use)."""
    d = Path(os.environ.get("MAMBA_DNA_CACHE") or Path.home() / ".cache" / "mamba-dna")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _source_key(path: Path) -> str:
    """Cache key of a source file: absolute path + size + mtime (changes when the file does)."""
    st = path.stat()
    ident = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """An exclusive inter-process lock (flock on a file in the cache; no-op without fcntl)."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic renames alone keep files whole
        yield
        return
    with open(lock_dir / f"{name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _dir_writable(d: Path) -> bool:
    """Writable by us, and not marked read-only (root passes os.access on any directory)."""
    try:
        mode = d.stat().st_mode
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK) and bool(mode & 0o222)


def _publish(path: Path) -> None:
    """Give a finished file the usual permissions (mkstemp creates it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


def _sniff(path: Path) -> str:
    """'plain' | 'gzip' | 'bgzf' from the first bytes; other compressions are an error."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if not head:
        raise InputError(f"{path}: the file is empty; expected a FASTA ('>name' lines)")
    if head.startswith(_GZIP_MAGIC):
        # BGZF = gzip member with an extra field whose subfield id is 'BC' (SAM spec 4.1).
        if len(head) >= 14 and head[3] & 0x04 and head[12:14] == b"BC":
            return "bgzf"
        return "gzip"
    for magic, kind in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise InputError(
                f"{path}: {kind}-compressed; expected a plain, gzip or bgzip FASTA",
                hint="decompress it first, or recompress with `bgzip`",
            )
    return "plain"


def _gunzip(src, out, chunk: int = 1 << 20, out_chunk: int = 1 << 20) -> None:
    """Stream-decompress gzip (any number of members) from src to out; zlib checks each
    member's CRC in C. Raises EOFError when the data stops inside a member.

    Output comes in bounded pieces: the same few buffers are reused instead of fresh
    multi-megabyte allocations, whose page faults cost more than the decompression here.
    """
    d = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, largest window
    fresh = True  # nothing fed to the current member yet
    while block := src.read(chunk):
        while block:
            out.write(d.decompress(block, out_chunk))
            fresh = False
            block = d.unconsumed_tail
            if d.eof:
                out.write(d.flush())
                block = d.unused_data  # the next member (BGZF, concatenated gzip)
                d, fresh = zlib.decompressobj(47), True
    out.write(d.flush())
    if not d.eof and not fresh:
        raise EOFError("compressed data ended before the end-of-stream marker")


def _gunzip_to_cache(path: Path) -> Path:
    """Decompress a plain-gzip FASTA once into the cache; returns the cached path."""
    key = _source_key(path)
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    dest = cache_dir() / "fasta" / f"{key}.{stem}"
    if dest.exists():
        return dest
    with _file_lock(f"gunzip-{key}"):
        if dest.exists():  # another worker finished it while we waited
            return dest
        log.info(
            f"{path}: plain gzip has no random access; decompressing once to {dest} "
            "(bgzip the file to read it in place)"
        )
        try:
            with open(path, "rb") as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
                _gunzip(src, out)
        except (EOFError, zlib.error) as e:
            raise InputError(
                f"{path}: corrupt or truncated gzip ({e}); expected a complete .gz file",
                hint="re-download it and check its checksum",
            ) from None
        _publish(dest)
    if dest.stat().st_size == 0:
        dest.unlink()
        raise InputError(f"{path}: decompresses to an empty file; expected a FASTA")
    return dest


# ----------------------------------------------------------------------------- .fai


class FaiRecord(NamedTuple):
    """One line of a samtools .fai: where a record's sequence lies in the file."""

    name: str
    length: int  # bases
    offset: int  # byte offset of the first base
    linebases: int  # bases per full line
    linewidth: int  # bytes per full line, newline (and CR) included


def _read_fai(fai: Path) -> list[FaiRecord] | None:
    """Parse a .fai; None when it is malformed (the caller rebuilds it)."""
    recs = []
    try:
        for line in fai.read_text().splitlines():
            if not line.strip():
                continue
            f = line.split("\t")
            recs.append(FaiRecord(f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4])))
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return recs or None


def _write_fai(dest: Path, recs: Sequence[FaiRecord]) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text("".join("\t".join(map(str, r)) + "\n" for r in recs))
    _publish(dest)


_SPACE = b" \t\r\n"
_PROBE = 1 << 16  # bytes read around a record boundary when checking an index


def fai_mismatch(recs: Sequence[FaiRecord], read, size: int | None = None) -> str | None:
    """Why the .fai records `recs` do not describe a FASTA; None when they do.

    `read(offset, n) -> bytes` reads the (uncompressed) file; `size` is its length when
    known (plain files). Checked for every record, in O(records) reads: its header line
    ends exactly where the sequence starts and names the record; the line layout is
    possible; the first and last line breaks sit where the widths say; only whitespace
    lies between the record's last base and the next header (or the end of the file).
    A stale index (a replaced file, a truncated or grown record, renamed or reordered
    records) fails at least one of these, whatever the files' modification times say.
    """
    if not recs:
        return "it lists no records"
    prev_end = 0
    for r in recs:
        lb, lw, n = r.linebases, r.linewidth, r.length
        if n < 1 or lb < 1 or lw - lb not in (1, 2) or r.offset < prev_end + 2:
            return f"record {r.name!r}: impossible layout (length {n}, offset {r.offset})"
        lo = max(prev_end, r.offset - _PROBE)
        head = read(lo, r.offset - lo)  # ... [gap] >name description\n
        if not head.endswith(b"\n"):
            return f"record {r.name!r}: no header line ends at offset {r.offset}"
        hs = head.rfind(b"\n", 0, len(head) - 1) + 1
        if hs == 0 and lo > prev_end:
            return f"record {r.name!r}: header line longer than {_PROBE} bytes"
        words = head[hs:].rstrip(b"\r\n")[1:].split(maxsplit=1)
        if not head[hs:].startswith(b">") or not words or words[0] != r.name.encode():
            return f"record {r.name!r}: the header at offset {lo + hs} is {head[hs:hs + 40]!r}"
        if head[:hs].strip(_SPACE):
            return f"record {r.name!r}: sequence bytes before its header (a longer previous record?)"
        eol = b"\n" if lw - lb == 1 else b"\r\n"
        last_line = (n - 1) // lb
        if last_line and read(r.offset + lb, lw - lb) != eol:
            return f"record {r.name!r}: no line break after the first {lb} bases"
        if last_line > 1 and read(r.offset + last_line * lw - (lw - lb), lw - lb) != eol:
            return f"record {r.name!r}: no line break before its last line"
        prev_end = r.offset + last_line * lw + (n - 1) % lb + 1  # just past the last base
        nxt = read(prev_end, 2)
        if nxt and not nxt.startswith((b"\n", b"\r\n")):
            return f"record {r.name!r}: sequence continues past its {n:,} bases"
    tail = read(prev_end, _PROBE)
    if tail.strip(_SPACE) or len(tail) == _PROBE or (size is not None and prev_end + len(tail) != size):
        return "the file continues after the last record the index lists"
    return None


def _line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, before '\\n') byte offsets of every line; int64 (n_lines,)."""
    nl = [
        np.flatnonzero(buf[i : i + _SCAN_CHUNK] == 10) + i for i in range(0, len(buf), _SCAN_CHUNK)
    ]
    ends = np.concatenate(nl) if nl else np.zeros(0, np.int64)  # (n_lines,)
    if len(buf) and buf[-1] != 10:  # last line without a newline
        ends = np.append(ends, len(buf))
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return starts, ends


class _Scan(NamedTuple):
    recs: list[FaiRecord]
    regular: bool  # True when the .fai describes the file (uniform widths and line endings)
    first_irregular: str  # where the first irregularity is, for the log line


def _scan_fasta(path: Path, buf: np.ndarray) -> _Scan:
    """Validate a plain FASTA held in `buf` and compute its .fai records (vectorised)."""
    starts, ends = _line_bounds(buf)  # (n_lines,) each
    nonblank = ends > starts
    if not nonblank.any():
        raise InputError(f"{path}: no sequence data (only blank lines); expected a FASTA")
    first_line = int(np.argmax(nonblank))
    first_byte = buf[starts[first_line]]
    if first_byte != ord(">"):
        if np.isin(buf, np.frombuffer(b" \t\r\n", np.uint8)).all():
            raise InputError(f"{path}: no sequence data (only blank lines); expected a FASTA")
        what = "looks like FASTQ" if first_byte == ord("@") else "is not a FASTA"
        shown = bytes(buf[starts[first_line] : min(ends[first_line], starts[first_line] + 20)])
        raise InputError(
            f"{path}: {what}: line {first_line + 1} starts with {shown!r}; "
            "expected a '>name' header line"
        )
    cr = np.zeros(len(ends), dtype=bool)  # line ends in '\r' (Windows line endings)
    cr[nonblank] = buf[ends[nonblank] - 1] == 13
    clen = ends - starts - cr  # (n_lines,) content length without '\r'
    is_header = nonblank.copy()
    is_header[nonblank] = buf[starts[nonblank]] == ord(">")
    heads = np.flatnonzero(is_header)  # (n_records,)
    bounds = np.append(heads, len(ends))

    recs: list[FaiRecord] = []
    seen: dict[str, int] = {}
    regular, first_irregular = True, ""
    for r, h in enumerate(heads):
        lo, hi = int(bounds[r]) + 1, int(bounds[r + 1])  # sequence lines [lo, hi)
        header = bytes(buf[starts[h] + 1 : ends[h] - cr[h]]).decode("utf-8", "replace")
        name = header.split(maxsplit=1)[0] if header.strip() else ""
        if not name:
            raise InputError(f"{path}: line {h + 1}: header '>' without a record name")
        if name in seen:
            raise InputError(
                f"{path}: duplicate record name {name!r} at lines {seen[name]} and {h + 1}; "
                "record names must be unique"
            )
        seen[name] = int(h) + 1
        while hi > lo and clen[hi - 1] == 0:  # trailing blank lines of a record are harmless
            hi -= 1
        if hi == lo:
            raise InputError(
                f"{path}: record {name!r} (line {h + 1}) has no sequence; "
                "expected sequence lines after each header"
            )
        lens = clen[lo:hi]  # (n_seq_lines,)
        length = int(lens.sum())
        if length == 0:
            raise InputError(f"{path}: record {name!r} (line {h + 1}) has no sequence")
        lb = int(lens[0])
        crs = cr[lo:hi]
        ok = bool((lens[:-1] == lb).all() and lens[-1] <= lb and (crs == crs[0]).all())
        if not ok and regular:
            regular = False
            bad = np.flatnonzero((lens[:-1] != lb) | (crs[:-1] != crs[0]))
            at = lo + (int(bad[0]) if len(bad) else len(lens) - 1)
            first_irregular = f"record {name!r}, line {at + 1}"
        lw = lb + 1 + int(crs[0])
        recs.append(FaiRecord(name, length, int(starts[lo]), lb, lw))
    return _Scan(recs, regular, first_irregular)


def _write_normalised(path: Path, buf: np.ndarray, dest: Path) -> None:
    """A copy of a FASTA with one sequence line per record and '\\n' line endings."""
    starts, ends = _line_bounds(buf)
    nonblank = ends > starts
    is_header = nonblank.copy()
    is_header[nonblank] = buf[starts[nonblank]] == ord(">")
    heads = np.flatnonzero(is_header)
    raw = memoryview(buf)
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for r, h in enumerate(heads):
            seq_end = int(starts[heads[r + 1]]) if r + 1 < len(heads) else len(buf)
            out.write(bytes(raw[starts[h] : ends[h]]).rstrip(b"\r") + b"\n")
            out.write(bytes(raw[ends[h] : seq_end]).translate(None, b"\r\n") + b"\n")
    _publish(dest)


def _read_lines(mm, rec: FaiRecord, start: int, end: int) -> bytes:
    """Bases [start, end) of a record from the mapped file, line breaks removed."""
    lb, lw = rec.linebases, rec.linewidth
    if lw == lb or end - start <= 4096:  # one line per record, or short: strip in one C pass
        b0 = rec.offset + (start // lb) * lw + start % lb
        b1 = rec.offset + ((end - 1) // lb) * lw + (end - 1) % lb + 1
        return mm[b0:b1].translate(None, b"\r\n")
    # Bulk: full lines as a (lines, linewidth) view; keeping the first `linebases` columns
    # drops every line break in one strided copy (memory speed, no per-line Python).
    l0, l1 = start // lb, (end - 1) // lb  # first and last line touched
    n_full = l1 - l0
    out = np.empty((n_full + 1) * lb, np.uint8)  # (bases in those lines,)
    lines = np.frombuffer(mm, np.uint8, count=n_full * lw, offset=rec.offset + l0 * lw)
    out[: n_full * lb].reshape(n_full, lb)[:] = lines.reshape(n_full, lw)[:, :lb]
    tail = min(lb, rec.length - l1 * lb)  # bases on the last line
    out[n_full * lb : n_full * lb + tail] = np.frombuffer(
        mm, np.uint8, count=tail, offset=rec.offset + l1 * lw
    )
    a = start - l0 * lb
    return out[a : a + end - start].tobytes()


def _bgzf_reader(fx):
    """read(offset, n) -> bytes at an uncompressed offset of a BGZF file open in pyfaidx
    (the .gzi maps uncompressed offsets to blocks, as pyfaidx's own fetch does)."""
    from bisect import bisect_right

    from pyfaidx import make_virtual_offset

    blocks = fx.gzi_index  # BgzfBlock(cstart, clen, ustart, ulen), by ustart
    ustarts = [b.ustart for b in blocks]

    def read(offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        b = blocks[max(0, bisect_right(ustarts, offset) - 1)]
        try:
            fx.file.seek(make_virtual_offset(b.cstart, offset - b.ustart))
            return fx.file.read(n)
        except (ValueError, OSError):  # beyond the file or its blocks
            return b""

    return read


# ----------------------------------------------------------------------------- aliases


def _alias_keys(name: str) -> list[str]:
    """Spellings under which a record can be asked for: chr1/1, chrM/MT/M, accession fields."""
    n = name.strip()
    keys = [n]
    base = n[3:] if n.lower().startswith("chr") else n
    keys += [base, "chr" + base]
    if base.upper() in ("M", "MT"):
        keys += ["M", "MT", "chrM", "chrMT"]
    if "|" in n:  # NCBI 'gi|123|ref|NC_017625.1|': each accession field
        keys += [f for f in n.split("|") if f and not f.isdigit() and f not in ("gi", "ref")]
    for k in list(keys):  # NC_017625.1 -> NC_017625
        if "." in k and k.rsplit(".", 1)[1].isdigit():
            keys.append(k.rsplit(".", 1)[0])
    return keys


# ----------------------------------------------------------------------------- Genome


class Genome:
    """Indexed random access to a FASTA (plain, BGZF, or plain gzip via the cache).

    `.names` (file order), `.lengths` (name -> bases), `.fetch(name, start, end) -> bytes`,
    `.tokens(name, start, end) -> (ids uint8 (L,), softmask bool (L,))`, `.resolve(name)`.
    `invalid="N"` maps unexpected characters to N and counts them in `.n_invalid`.
    Picklable (data-loader workers reopen the file lazily).
    """

    def __init__(self, path: str | os.PathLike, *, invalid: str = "error"):
        self.path = Path(path)
        if invalid not in ("error", "N"):
            raise ConfigError(f"invalid={invalid!r}: expected 'error' or 'N'")
        self.invalid = invalid
        self.n_invalid = 0
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file; expected a FASTA")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory; expected a FASTA file")
        self.kind = _sniff(self.path)
        self._faidx = None  # pyfaidx.Faidx for BGZF
        self._mm: mmap.mmap | None = None
        self._fh = None
        self.data_path = self.path  # the file actually read (a cache copy for plain gzip)
        if self.kind == "bgzf":
            recs = self._open_bgzf()
        else:
            recs = None
        if recs is None:
            if self.kind in ("gzip", "bgzf"):
                self.data_path = _gunzip_to_cache(self.path)
            recs = self._index_plain()
        self._recs: dict[str, FaiRecord] = {r.name: r for r in recs}
        self.names: list[str] = [r.name for r in recs]
        self.lengths: dict[str, int] = {r.name: r.length for r in recs}
        self._alias_map: dict[str, str | None] | None = None  # built on first alias lookup

    @property
    def _aliases(self) -> dict[str, str | None]:
        """alias -> record name; None marks an ambiguous alias (two records answer to it)."""
        if self._alias_map is None:
            hits: dict[str, set[str]] = {}
            for name in self.names:
                for k in _alias_keys(name):
                    hits.setdefault(k, set()).add(name)
            self._alias_map = {k: (next(iter(v)) if len(v) == 1 else None) for k, v in hits.items()}
        return self._alias_map

    # -- opening -------------------------------------------------------------------------

    def _index_place(self, data: Path, suffix: str) -> Path:
        """Beside the data file when its directory is writable, else in the cache."""
        if _dir_writable(data.parent):
            return data.with_name(data.name + suffix)
        return self._cached_index(data, suffix)

    @staticmethod
    def _cached_index(data: Path, suffix: str) -> Path:
        return cache_dir() / "index" / f"{_source_key(data)}.{data.name}{suffix}"

    def _fresh_fai(self, data: Path) -> list[FaiRecord] | None:
        """An existing .fai beside the file or in the cache that is proven to describe the
        file (`fai_mismatch`: never trusted by modification time alone)."""
        for fai in (data.with_name(data.name + ".fai"), self._cached_index(data, ".fai")):
            if not fai.exists():
                continue
            recs = _read_fai(fai)
            if recs is None:
                continue
            buf = self._map(data)
            why = fai_mismatch(recs, lambda o, n, b=buf: b[o : o + n].tobytes(), len(buf))
            del buf  # unmap before the next candidate
            if why is None:
                return recs
            log.info(f"{fai}: does not describe {data} ({why}); re-indexing")
        return None

    def _index_plain(self) -> list[FaiRecord]:
        data = self.data_path
        recs = self._fresh_fai(data)
        if recs is not None:
            return recs
        with _file_lock(f"fai-{_source_key(data)}"):
            recs = self._fresh_fai(data)  # built by another worker while we waited?
            if recs is not None:
                return recs
            buf = self._map(data)
            scan = _scan_fasta(self.path, buf)
            if not scan.regular:
                norm = cache_dir() / "fasta" / f"{_source_key(data)}.norm.{data.name}"
                log.info(
                    f"{self.path}: line widths or line endings vary ({scan.first_irregular}); "
                    f"a .fai cannot describe that, so reading a normalised copy {norm}"
                )
                if not norm.exists():
                    _write_normalised(self.path, buf, norm)
                del buf
                self._close_map()
                self.data_path = norm
                return self._index_plain()
            try:
                _write_fai(self._index_place(data, ".fai"), scan.recs)
            except OSError:  # e.g. a read-only file system that still looked writable
                _write_fai(self._cached_index(data, ".fai"), scan.recs)
            return scan.recs

    def _open_bgzf(self, retry: bool = True) -> list[FaiRecord] | None:
        """BGZF through pyfaidx; None when pyfaidx cannot index it (fall back to the cache)."""
        import pyfaidx

        fai = self._index_place(self.path, ".fai")
        gzi = self._index_place(self.path, ".gzi")
        fai.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _file_lock(f"bgzf-{_source_key(self.path)}"):
                fx = pyfaidx.Faidx(
                    str(self.path),
                    indexname=str(fai),
                    gzi_indexname=str(gzi),
                    sequence_always_upper=False,
                    read_long_names=False,
                )
        except Exception as e:  # noqa: BLE001 - pyfaidx raises many types; we fall back
            log.info(f"{self.path}: BGZF could not be indexed in place ({e}); using the cache")
            return None
        recs = []
        for name, ir in fx.index.items():
            recs.append(FaiRecord(name, ir.rlen, ir.offset, ir.lenc, ir.lenb))
            if ir.rlen == 0:
                fx.close()
                raise InputError(f"{self.path}: record {name!r} has no sequence")
        if not recs:
            fx.close()
            raise InputError(f"{self.path}: no FASTA records found; expected '>name' headers")
        why = fai_mismatch(recs, _bgzf_reader(fx))
        if why is not None:  # pyfaidx trusts an index by its mtime: rebuild it once
            fx.close()
            if retry:
                log.info(f"{fai}: does not describe {self.path} ({why}); re-indexing")
                for p in (fai, gzi):
                    with contextlib.suppress(OSError):
                        p.unlink()
                return self._open_bgzf(retry=False)
            log.info(f"{self.path}: a fresh BGZF index still fails its check ({why}); using the cache")
            return None
        self._faidx = fx
        return recs

    def _map(self, data: Path) -> np.ndarray:
        self._close_map()
        self._fh = open(data, "rb")
        if os.fstat(self._fh.fileno()).st_size == 0:
            raise InputError(f"{self.path}: the file is empty; expected a FASTA")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._mm, dtype=np.uint8)  # (file_bytes,)

    def _close_map(self) -> None:
        # numpy views of the map may still be alive; the map closes when they are collected
        self._mm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self._close_map()
        if self._faidx is not None:
            self._faidx.close()
            self._faidx = None

    def __enter__(self) -> Genome:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_mm"] = d["_fh"] = d["_faidx"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)

    def __repr__(self) -> str:
        return f"Genome({str(self.path)!r}, {len(self.names)} records, {self.total_length:,} bp)"

    @property
    def total_length(self) -> int:
        return sum(self.lengths.values())

    # -- access --------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The record name in this file for `name` (chr1 <-> 1, chrM <-> MT, accessions)."""
        if name in self._recs:
            return name
        keys = _alias_keys(name)
        for k in keys:  # an exact record name under any spelling wins
            if k in self._recs:
                return k
        for k in keys:
            hit = self._aliases.get(k)
            if hit:
                return hit
        shown = ", ".join(self.names[:8]) + (" ..." if len(self.names) > 8 else "")
        raise InputError(
            f"{self.path}: no record named {name!r} (also tried chr/MT aliases); "
            f"the file has {len(self.names)}: {shown}"
        )

    def _check_range(self, name: str, start: int, end: int | None) -> tuple[str, int, int]:
        rname = self.resolve(name)
        n = self.lengths[rname]
        end = n if end is None else int(end)
        start = int(start)
        if not (0 <= start <= end <= n):
            raise InputError(
                f"{self.path}: region {name}:{start}-{end} is outside record {rname!r} "
                f"(length {n:,}); expected 0 <= start <= end <= {n:,} (0-based, half-open)"
            )
        return rname, start, end

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Raw sequence bytes of name[start:end) as in the file (case kept)."""
        return self._fetch(*self._check_range(name, start, end))

    def _fetch(self, rname: str, start: int, end: int) -> bytes:
        if end == start:
            return b""
        if self.kind == "bgzf" and self.data_path == self.path:
            if self._faidx is None:
                self._open_bgzf()
            # pyfaidx takes 1-based inclusive coordinates
            return self._faidx.fetch(rname, start + 1, end).seq.encode("ascii")
        rec = self._recs[rname]
        if self._mm is None:
            self._map(self.data_path)
        try:
            raw = _read_lines(self._mm, rec, start, end)
        except ValueError:
            raw = b""
        if len(raw) != end - start:
            raise InputError(
                f"{self.path}: record {rname!r} is shorter in the file than its index says; "
                f"the .fai is stale or the file changed (delete the .fai and retry)"
            )
        return raw

    def tokens(self, name: str, start: int = 0, end: int | None = None):
        """(ids uint8 (L,), softmask bool (L,)) for name[start:end).

        Long ranges are read and encoded in pieces of `_TOKEN_CHUNK` bases: the temporaries
        stay cache-sized and reused, which is several times faster than whole-record
        temporaries on a multi-megabase record (page faults, cache misses).
        """
        rname, start, end = self._check_range(name, start, end)
        where = f"{self.path}: record {rname!r}"
        if end - start <= _TOKEN_CHUNK:
            ids, soft, n_bad = encode_bytes(
                self._fetch(rname, start, end), invalid=self.invalid, where=where,
                with_softmask=True, offset=start,
            )
            self.n_invalid += n_bad
            return ids, soft
        ids = np.empty(end - start, np.uint8)  # (L,)
        soft = np.empty(end - start, bool)  # (L,)
        for a in range(start, end, _TOKEN_CHUNK):
            b = min(a + _TOKEN_CHUNK, end)
            i, sm, n_bad = encode_bytes(
                self._fetch(rname, a, b), invalid=self.invalid, where=where,
                with_softmask=True, offset=a,
            )
            ids[a - start : b - start] = i
            soft[a - start : b - start] = sm
            self.n_invalid += n_bad
        return ids, soft

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except InputError:
            return False
        return True


# ----------------------------------------------------------------------------- regions


class Region(NamedTuple):
    chrom: str
    start: int
    end: int
    name: str = ""  # BED column 4 ("" when absent or ".")
    strand: str = "+"  # BED column 6 ("+" when absent or not + / -)


def read_bed(path: str | os.PathLike, genome: Genome | None = None) -> list[Region]:
    """BED3+ (0-based, half-open; name and strand from columns 4 and 6 when present), plain or
    .gz; '#', 'track' and 'browser' lines skipped. With `genome`, names are resolved and bounds
    checked."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such BED file")
    out = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\r\n").split("\t")
            if len(f) < 3:
                f = line.split()
            try:
                chrom, s, e = f[0], int(f[1]), int(f[2])
            except (IndexError, ValueError):
                raise InputError(
                    f"{path}: line {i}: expected 'chrom<TAB>start<TAB>end' (0-based), "
                    f"got {line.strip()[:60]!r}"
                ) from None
            if s < 0 or e <= s:
                raise InputError(f"{path}: line {i}: start {s} / end {e}: expected 0 <= start < end")
            bed_strand(f, path, i)  # column 6, when present, must be +, - or .
            if genome is not None:
                try:
                    chrom = genome.resolve(chrom)
                except InputError as err:
                    raise InputError(f"{path}: line {i}: {err}") from None
                if e > genome.lengths[chrom]:
                    raise InputError(
                        f"{path}: line {i}: region {chrom}:{s}-{e} is outside the contig "
                        f"(length {genome.lengths[chrom]:,} in {genome.path})"
                    )
            name = f[3] if len(f) > 3 and f[3] not in ("", ".") else ""
            strand = f[5] if len(f) > 5 and f[5] in ("+", "-") else "+"
            out.append(Region(chrom, s, e, name, strand))
    if not out:
        raise InputError(f"{path}: no regions (empty BED)")
    return out


def bed_strand(fields: Sequence[str], path, lineno: int) -> str:
    """The strand of a BED line's fields: column 6 '+' or '-'; '.' or no column 6 is '+'.
    Anything else is an InputError naming the file and line (never silently '+')."""
    if len(fields) < 6 or fields[5].strip() in ("", "."):
        return "+"
    st = fields[5].strip()
    if st not in ("+", "-"):
        raise InputError(f"{path}: line {lineno}: strand (column 6) {st!r}: expected '+', '-' or '.'")
    return st


def parse_region(spec: str | None, names: Iterable[str] = (), opt: str = "--region"):
    """'chrom:start-end' (1-based, inclusive; commas allowed) or 'chrom' -> (chrom, start0,
    end0 half-open; whole contig: end = 2**62), None for no region.

    A colon with no valid 'start-end' after it is a malformed region (ConfigError), not a
    contig name, unless the whole text is one of `names` (contig names may hold colons).
    """
    import re

    if not spec:
        return None
    text = spec.strip()
    if text in set(names):
        return text, 0, 1 << 62
    m = re.fullmatch(r"([^:\s]+|.+):([\d,]+)-([\d,]+)", text)
    if m is None:
        if ":" in text or not text or any(c.isspace() for c in text):
            raise ConfigError(f"{opt} {spec!r}: malformed region; expected chrom:start-end "
                              "(1-based, inclusive, e.g. MT:100-200) or a contig name")
        return text, 0, 1 << 62
    chrom = m.group(1)
    a, b = int(m.group(2).replace(",", "")), int(m.group(3).replace(",", ""))
    if a < 1 or b < a:
        raise ConfigError(f"{opt} {spec!r}: expected 1 <= start <= end (1-based, inclusive)")
    return chrom, a - 1, b


def _merge(regions: Iterable[Region]) -> list[Region]:
    """Sort by (chrom first-seen order, start) and merge overlaps so no base is visited twice."""
    order: dict[str, int] = {}
    rs = list(regions)
    for r in rs:
        order.setdefault(r.chrom, len(order))
    rs.sort(key=lambda r: (order[r.chrom], r.start, r.end))
    out: list[Region] = []
    for r in rs:
        if out and out[-1].chrom == r.chrom and r.start <= out[-1].end:
            if r.end > out[-1].end:
                out[-1] = Region(r.chrom, out[-1].start, r.end)
        else:
            out.append(r)
    return out


# ----------------------------------------------------------------------------- splits

SPLITS = ("train", "val", "test")


def _unit_hash(*parts) -> float:
    """A deterministic number in [0, 1) from the parts (stable across runs and machines)."""
    h = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(
    chrom: str,
    start: int = 0,
    *,
    split_by: str = "record",
    block_size: int = 1 << 23,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> str:
    """'train' | 'val' | 'test' for the record `chrom` (split_by="record") or for the
    position block containing `start` (split_by="block", blocks of `block_size` bases).

    A pure function of its arguments: the same record/block always lands in the same split,
    on any machine. Fractions are the expected share of records/blocks.
    """
    if split_by not in ("record", "block"):
        raise ConfigError(f"split_by={split_by!r}: expected 'record' or 'block'")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: expected two "
            "non-negative fractions summing to less than 1"
        )
    u = _unit_hash(seed, chrom) if split_by == "record" else _unit_hash(seed, chrom, start // block_size)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


# ----------------------------------------------------------------------------- windows


class Window(NamedTuple):
    """One window: tokens/softmask of `length` (N-padded past `end` when pad="N")."""

    tokens: np.ndarray  # uint8 (length,)
    softmask: np.ndarray  # bool (length,)
    chrom: str
    start: int  # 0-based, half-open [start, end) on the + strand
    end: int  # end - start < length when the window was padded
    strand: str  # "+" or "-" (tokens reverse-complemented; coordinates stay + strand)


@dataclass
class WindowSpec:
    """Everything that decides which windows a genome yields (saved in shard manifests)."""

    length: int = 1 << 20
    stride: int | None = None  # None = length (non-overlapping)
    max_n_fraction: float = 0.5  # drop windows with more N among their real bases
    pad: str = "N"  # "N": pad the last window of a region with N; "drop": skip it
    split: str | None = None  # None = all windows; else only this split's
    split_by: str = "record"
    block_size: int | None = None  # split_by="block": None = 8 * length
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    strands: str = "+"  # "+" or "both" (adds the reverse complement of each window)

    def check(self) -> WindowSpec:
        if self.length < 1:
            raise ConfigError(f"window length {self.length}: expected a positive integer")
        if self.stride is None:
            self.stride = self.length
        if self.stride < 1:
            raise ConfigError(f"stride {self.stride}: expected a positive integer")
        if self.pad not in ("N", "drop"):
            raise ConfigError(f"pad={self.pad!r}: expected 'N' or 'drop'")
        if self.split not in (None, *SPLITS):
            raise ConfigError(f"split={self.split!r}: expected one of {SPLITS} or None")
        if self.strands not in ("+", "both"):
            raise ConfigError(f"strands={self.strands!r}: expected '+' or 'both'")
        if not 0 <= self.max_n_fraction <= 1:
            raise ConfigError(f"max_n_fraction={self.max_n_fraction}: expected 0..1")
        if self.block_size is None:
            self.block_size = 8 * self.length
        if self.split_by == "block" and self.block_size < self.length:
            raise ConfigError(
                f"block_size {self.block_size} < window length {self.length}: a split block "
                "must hold at least one window"
            )
        split_of("x", split_by=self.split_by, val_fraction=self.val_fraction,
                 test_fraction=self.test_fraction)  # validates the split options
        return self

    def split_kw(self) -> dict:
        return dict(
            split_by=self.split_by,
            block_size=self.block_size,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )


def _segments(region: Region, spec: WindowSpec) -> list[tuple[Region, str]]:
    """Cut a region into maximal runs of one split (block boundaries); windows never cross
    a run boundary, so windows of different splits never share a base."""
    kw = spec.split_kw()
    if spec.split_by == "record":
        return [(region, split_of(region.chrom, 0, **kw))]
    bs = spec.block_size
    out: list[tuple[Region, str]] = []
    pos = region.start
    while pos < region.end:
        nxt = min((pos // bs + 1) * bs, region.end)
        s = split_of(region.chrom, pos, **kw)
        if out and out[-1][1] == s:
            out[-1] = (Region(region.chrom, out[-1][0].start, nxt), s)
        else:
            out.append((Region(region.chrom, pos, nxt), s))
        pos = nxt
    return out


def _window_starts(seg: Region, length: int, stride: int, pad: str) -> list[int]:
    """Window starts in a segment: every stride; the tail window is padded or dropped."""
    n = seg.end - seg.start
    if pad == "drop":
        return list(range(seg.start, seg.end - length + 1, stride)) if n >= length else []
    starts = []
    for s in range(seg.start, seg.end, stride):
        starts.append(s)
        if s + length >= seg.end:  # this window reaches the end: later ones add nothing
            break
    return starts


class GenomeWindows:
    """Fixed-length windows over a genome: an iterable of `Window`.

    GenomeWindows(fasta, length=2**20, stride=None, regions=None, max_n_fraction=0.5,
    pad="N", split=None, split_by="record", val_fraction=0.1, test_fraction=0.1, seed=0)

    `fasta`: a path or a `Genome`. `regions`: None (every record), a BED path, a list of
    record names, or a list of (chrom, start, end). Windows come in file order, each region
    read once in bulk. `split` restricts to one split of the deterministic assignment
    (`split_of`); windows of different splits never overlap.
    """

    def __init__(
        self,
        fasta: str | os.PathLike | Genome,
        length: int = 1 << 20,
        stride: int | None = None,
        regions=None,
        max_n_fraction: float = 0.5,
        pad: str = "N",
        split: str | None = None,
        split_by: str = "record",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        *,
        block_size: int | None = None,
        strands: str = "+",
        invalid: str = "error",
    ):
        self.genome = fasta if isinstance(fasta, Genome) else Genome(fasta, invalid=invalid)
        self.spec = WindowSpec(
            length=int(length),
            stride=None if stride is None else int(stride),
            max_n_fraction=max_n_fraction,
            pad=pad,
            split=split,
            split_by=split_by,
            block_size=block_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            strands=strands,
        ).check()
        self.regions = self._regions(regions)
        self.n_dropped_n = 0  # windows skipped for too many N

    def _regions(self, regions) -> list[Region]:
        g = self.genome
        if regions is None:
            return [Region(n, 0, g.lengths[n]) for n in g.names]
        if isinstance(regions, (str, os.PathLike)):
            return _merge(read_bed(regions, g))
        out = []
        for r in regions:
            if isinstance(r, str):
                name = g.resolve(r)
                out.append(Region(name, 0, g.lengths[name]))
            else:
                chrom, s, e = r[0], r[1], r[2]  # (chrom, start, end) or a Region
                name, s, e = g._check_range(chrom, s, e)
                if e <= s:
                    raise InputError(f"region {chrom}:{s}-{e} is empty; expected start < end")
                out.append(Region(name, s, e))
        return _merge(out)

    def plan(self) -> Iterator[tuple[Region, str, list[int]]]:
        """(segment, split, window starts) for every segment in the wanted split."""
        sp = self.spec
        for region in self.regions:
            for seg, split in _segments(region, sp):
                if sp.split is not None and split != sp.split:
                    continue
                yield seg, split, _window_starts(seg, sp.length, sp.stride, sp.pad)

    def __iter__(self) -> Iterator[Window]:
        for seg, _split, starts in self.plan():
            yield from self.windows_in(seg, starts)

    def windows_in(self, seg: Region, starts: Sequence[int]) -> Iterator[Window]:
        """The windows of one planned segment (its sequence is read once, in bulk)."""
        for tok, sm, st, en, strand in self.window_blocks(seg, starts):
            for i in range(len(st)):
                yield Window(tok[i], sm[i], seg.chrom, int(st[i]), int(en[i]), strand[i])

    def window_blocks(self, seg: Region, starts: Sequence[int], max_bytes: int = 1 << 26):
        """The windows of one segment as arrays, a block at a time (vectorised: no per-window
        Python). Yields (tokens uint8 (k, L), softmask bool (k, L), start int64 (k,),
        end int64 (k,), strand list[str] (k,)); with strands="both" each window's reverse
        complement follows it. Windows with too many N are dropped (counted in n_dropped_n).
        """
        sp = self.spec
        L = sp.length
        rel = np.asarray(starts, dtype=np.int64) - seg.start  # (k,) window starts in the segment
        if not len(rel):
            return
        ids, soft = self.genome.tokens(seg.chrom, seg.start, seg.end)  # (n,) each
        n = len(ids)
        ends = np.minimum(rel + L, n)  # (k,) end of the real bases
        n_cum = np.concatenate([[0], np.cumsum(ids == N)])  # (n + 1,) N count prefix sums
        keep = (n_cum[ends] - n_cum[rel]) <= sp.max_n_fraction * (ends - rel)
        self.n_dropped_n += int(np.count_nonzero(~keep))
        rel, ends = rel[keep], ends[keep]
        if not len(rel):
            return
        pad = max(0, int(rel.max()) + L - n)  # N padding after the segment's last base
        if pad:
            ids = np.concatenate([ids, np.full(pad, N, np.uint8)])  # (n + pad,)
            soft = np.concatenate([soft, np.zeros(pad, bool)])
        if len(rel) == 1:  # common for short records: no strided views needed
            a = int(rel[0])
            tok_view, sm_view = ids[None, a : a + L], soft[None, a : a + L]  # (1, L)
            row0 = a  # row r of the view is the window starting at r + row0
        else:
            tok_view = np.lib.stride_tricks.sliding_window_view(ids, L)  # (n + pad - L + 1, L)
            sm_view = np.lib.stride_tricks.sliding_window_view(soft, L)
            row0 = 0
        per_block = max(1, max_bytes // (2 * L))
        for b in range(0, len(rel), per_block):
            r = rel[b : b + per_block]
            tok, sm = tok_view[r - row0], sm_view[r - row0]  # (k, L) copies
            st, en = r + seg.start, ends[b : b + per_block] + seg.start
            if sp.strands == "both":  # interleave: +, -, +, - ...
                k = len(r)
                tok = np.stack([tok, reverse_complement(tok)], axis=1).reshape(2 * k, L)
                sm = np.stack([sm, sm[:, ::-1]], axis=1).reshape(2 * k, L)
                st, en = np.repeat(st, 2), np.repeat(en, 2)
                yield tok, sm, st, en, ["+", "-"] * k
            else:
                yield tok, sm, st, en, ["+"] * len(r)
